"""The small contract between a codec and the pipeline.

pipeline/ knows codecs only through `Codec`: it cuts audio into the codec's segments on CPU workers
(`split_segments`), ships those to encode actors (`encode_segments`) and joins the per-segment tokens
back (`join_segment_tokens`). A second codec is added by implementing this protocol, without touching
pipeline/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Segments:
    """The encoder input of one clip, cut so that every segment can be encoded on its own.

    `samples[i]` holds what segment i needs, context included (for SemantiCodec: the DC-removed
    10.24 s window plus the 240 samples its last fbank frames look ahead into). `valid_frames[i]`
    says how many feature frames of the segment come from real samples (the rest are padding).
    """

    samples: torch.Tensor  # float32 [S, segment_input_samples]
    valid_frames: torch.Tensor  # int64 [S]
    num_tokens: int  # tokens of the whole clip after joining


@runtime_checkable
class Codec(Protocol):
    """What pipeline/ may rely on."""

    name: str
    sample_rate: int  # input sample rate the codec expects (Hz)
    segment_input_samples: int  # length of one row of `Segments.samples`
    device: torch.device

    @property
    def frame_rate(self) -> float:
        """Token frames ([.., 2] pairs) per second."""
        ...

    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        """One vocabulary size per token stream."""
        ...

    def num_tokens(self, num_samples: int) -> int:
        """Token frames for a clip of `num_samples` samples at `sample_rate`."""
        ...

    def split_segments(self, waveform: torch.Tensor) -> Segments:
        """Cut one mono clip (float32 [N], at `sample_rate`) into independently encodable segments."""
        ...

    def encode_segments(self, samples: torch.Tensor, valid_frames: torch.Tensor) -> torch.Tensor:
        """Tokens of a batch of segments (from any clips): int64 [S, tokens_per_segment, streams]."""
        ...

    def join_segment_tokens(self, segment_tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """One clip's tokens [num_tokens, streams] from its segments' tokens, in order."""
        ...

    def encode_batch(
        self, waveforms: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens for many clips at once: ([B, T_max, streams] padded with -1, [B] lengths)."""
        ...

    def decode_batch(
        self, tokens: torch.Tensor, token_lengths: torch.Tensor, *args: Any, **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms for many token sequences: ([B, N_max] float32, [B] lengths). The options are the
        codec's own (checked before any model loads by the registry's `check_decode_options`)."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the tokens this codec makes: codec, version, config, weights digest."""
        ...
