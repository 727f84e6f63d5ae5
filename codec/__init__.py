"""SemantiCodec in plain PyTorch: the official tokens from the official checkpoints, batched.

`SemantiCodec` is the model; `Codec` the interface pipeline/ relies on; `build_codec` the factory
from a config. No Ray here.
"""

from .checkpoint import CheckpointError
from .config import SemantiCodecConfig, num_tokens
from .interface import Codec, Segments
from .registry import CodecSpec, build_codec, build_segmenter, check_decode_options, describe_codec
from .resample import to_codec_input
from .semanticodec import DecoderLoadError, SemantiCodec

__all__ = [
    "CheckpointError",
    "Codec",
    "CodecSpec",
    "DecoderLoadError",
    "SemantiCodec",
    "SemantiCodecConfig",
    "Segments",
    "build_codec",
    "build_segmenter",
    "check_decode_options",
    "describe_codec",
    "num_tokens",
    "to_codec_input",
]
