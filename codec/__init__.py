"""SemantiCodec in plain PyTorch: the official tokens from the official checkpoints, batched.

`SemantiCodec` is the model; `Codec` the interface pipeline/ relies on; `build_codec` the factory
from a config. No Ray here.
"""

from .checkpoint import CheckpointError
from .config import SemantiCodecConfig, num_tokens
from .interface import Codec, Segments
from .semanticodec import SemantiCodec

__all__ = ["Codec", "CheckpointError", "SemantiCodec", "SemantiCodecConfig", "Segments",
           "num_tokens"]
