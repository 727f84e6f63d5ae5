"""The job fingerprint: what the tokens depend on. Its digest names the dataset version folder."""

from __future__ import annotations

from typing import Any

from codec import describe_codec
from pipeline.config import TokenizeConfig


def job_fingerprint(config: TokenizeConfig) -> dict[str, Any]:
    """What the tokens depend on; its digest names the dataset version (one place computes it)."""
    return {
        **describe_codec(config.codec_spec()),
        "channel_policy": config.channel_policy,
        "resampler": config.resampler,
    }
