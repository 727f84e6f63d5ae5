"""Codecs by name, built from plain options: what pipeline/ ships to its workers.

A `CodecSpec` is small and picklable; workers turn it into a replica (`build_codec`), CPU stages
into a weight-free segmenter (`build_segmenter`), and the driver into the output's identity
(`describe_codec`) without loading any model. A new codec registers a class here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .interface import Codec, Segments
from .semanticodec import SemantiCodec

CODECS: dict[str, type] = {"semanticodec": SemantiCodec}


@dataclass(frozen=True)
class CodecSpec:
    name: str = "semanticodec"
    options: dict[str, Any] = field(default_factory=dict)

    def codec_class(self) -> type:
        try:
            return CODECS[self.name]
        except KeyError:
            raise ValueError(f"unknown codec {self.name!r}; known: {sorted(CODECS)}") from None


def build_codec(spec: CodecSpec, *, device: str | torch.device | None = None) -> Codec:
    return spec.codec_class().from_options(dict(spec.options), device=device)


def describe_codec(spec: CodecSpec) -> dict[str, Any]:
    return spec.codec_class().describe(dict(spec.options))


def build_segmenter(spec: CodecSpec) -> Callable[[torch.Tensor], Segments]:
    return spec.codec_class().segmenter(dict(spec.options))


def check_decode_options(spec: CodecSpec, options: dict[str, Any]) -> None:
    """ValueError when `decode_batch(**options)` could never run for this codec."""
    spec.codec_class().check_decode_options(dict(options))
