"""Codecs by name, built from plain options: what pipeline/ ships to its workers.

A `CodecSpec` is small and picklable; workers turn it into a replica (`build_codec`), CPU stages
into a weight-free segmenter (`build_segmenter`), and the driver into the output's identity
(`describe_codec`) without loading any model. A new codec registers a class here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .checkpoint import WeightsError, check_semanticodec_weights
from .interface import Codec, Segments
from .semanticodec import SemantiCodec


class CodecClass(Protocol):
    """What a registered codec class offers as classmethods (before any replica exists)."""

    def from_options(self, options: dict[str, Any], *, device: str | torch.device | None = None) -> Codec: ...

    def describe(self, options: dict[str, Any]) -> dict[str, Any]: ...

    def segmenter(self, options: dict[str, Any]) -> Callable[[torch.Tensor], Segments]: ...

    def check_decode_options(self, options: dict[str, Any]) -> None: ...


CODECS: dict[str, CodecClass] = {"semanticodec": SemantiCodec}
# codec name -> check(options, components): raises WeightsError when a replica could not load them
WEIGHT_CHECKS: dict[str, Callable[..., None]] = {"semanticodec": check_semanticodec_weights}


@dataclass(frozen=True)
class CodecSpec:
    name: str = "semanticodec"
    options: dict[str, Any] = field(default_factory=dict)

    def codec_class(self) -> CodecClass:
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


def check_weights(spec: CodecSpec, *, components: tuple[str, ...] = ("encoder",)) -> None:
    """Before any cluster starts: `WeightsError` (one line, naming the file) when the weights a
    replica of `spec` with `components` would load are missing, unreadable or do not match the
    architecture. Random weights pass. Reads the files memory-mapped, with safe loading only."""
    check = getattr(spec.codec_class(), "check_weights", None) or WEIGHT_CHECKS.get(spec.name)
    if check is not None:
        check(dict(spec.options), components)


__all__ = [
    "CODECS",
    "CodecSpec",
    "WeightsError",
    "build_codec",
    "build_segmenter",
    "check_decode_options",
    "check_weights",
    "describe_codec",
]
