"""Constants and small helpers shared by the tests (one copy instead of one per test file)."""

from __future__ import annotations

# The tiny random-weight codec the pipeline tests run on (fast on CPU; tokens are meaningless).
TINY_CODEC = {"codec_size": "tiny", "weights": "random:0"}
TINY = {**TINY_CODEC, "token_rate": 50, "semantic_vocab_size": 16384}
TINY_FLAGS = ["--codec-size", "tiny", "--weights", "random:0"]
# A job fingerprint for tests of the output side that need no codec.
FINGERPRINT = {"codec": "semanticodec", "token_rate": 50, "semantic_vocab_size": 16384}
