"""Stage 2 (actor pool): one codec replica per actor encodes full batches of segments.

Each actor loads its replica once (encode-only), on CUDA when it was given a GPU, else on the CPU
with as many torch threads as CPUs it was given. Rows that are not segments pass through untouched.
A batch that fails is retried segment by segment, so one bad segment becomes one error row and
never takes its batch-mates down with it. (Fault injection for tests lives in tests/faults.py, a
subclass of `EncodeActor`; this module has no test hooks.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from codec import CodecSpec, build_codec
from pipeline.runtime.telemetry import EncodeMetrics
from pipeline.tokenize.prepare_stage import ERROR, SEGMENT

log = logging.getLogger(__name__)


@dataclass
class EncodeStats:
    batches: int = 0
    segments: int = 0
    seconds: float = 0.0
    failed_segments: int = 0


class EncodeActor:
    """Callable class for `Dataset.map_batches` with an actor pool."""

    def __init__(
        self, spec: CodecSpec, *, device: str = "cpu", threads: int | None = None, batch_size: int = 8
    ) -> None:
        if device == "cpu" and threads:
            torch.set_num_threads(max(1, int(threads)))
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("encode actor was given a GPU but torch sees no CUDA device")
        self.codec = build_codec(spec, device=device)
        self.stats = EncodeStats()
        self.metrics = EncodeMetrics(batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kinds = batch["row_kind"]
        index = np.flatnonzero(kinds == SEGMENT)
        tokens = np.empty(len(kinds), dtype=object)
        tokens[:] = [b""] * len(kinds)
        if len(index):
            started = time.perf_counter()
            encoded = self._encode_rows(batch, index)
            elapsed = time.perf_counter() - started
            self.stats.seconds += elapsed
            self.stats.batches += 1
            self.metrics.batch(elapsed, len(index))
            for position, result in zip(index, encoded, strict=True):
                if isinstance(result, bytes):
                    tokens[position] = result
                else:  # an exception: the segment becomes an error row of its item
                    self.stats.failed_segments += 1
                    batch["row_kind"][position] = ERROR
                    batch["stage"][position] = "encode"
                    batch["reason"][position] = "encode_failed"
                    batch["detail"][position] = f"{type(result).__name__}: {result}"[:2000]
        out = {name: column for name, column in batch.items() if name != "samples"}
        out["tokens"] = tokens
        return out

    def _encode_rows(self, batch: dict[str, np.ndarray], index: np.ndarray) -> Sequence[bytes | Exception]:
        try:
            return self._encode(batch, index)
        except Exception as error:  # isolate the failing segment(s)
            log.warning("encode batch of %d segments failed (%s); retrying one by one", len(index), error)
        results: list[bytes | Exception] = []
        for position in index:
            try:
                results.append(self._encode(batch, np.array([position]))[0])
            except Exception as error:  # noqa: BLE001 - recorded as an error row
                results.append(error)
        return results

    def _encode(self, batch: dict[str, np.ndarray], index: np.ndarray) -> list[bytes]:
        samples = torch.from_numpy(
            np.stack([np.frombuffer(batch["samples"][i], dtype=np.float32) for i in index])
        )
        valid = torch.as_tensor(batch["valid_frames"][index].astype(np.int64))
        tokens = self.codec.encode_segments(samples, valid).cpu().numpy().astype(np.uint16)
        self.stats.segments += len(index)
        return [np.ascontiguousarray(t).tobytes() for t in tokens]
