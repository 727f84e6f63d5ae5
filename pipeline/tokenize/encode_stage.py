"""Stage 2 (actor pool): one codec replica per actor encodes full batches of segments.

Each actor loads its replica once (encode-only), on CUDA when it was given a GPU, else on the CPU
with as many torch threads as CPUs it was given. Rows that are not segments pass through untouched.
A batch that fails is retried segment by segment, so one bad segment becomes one error row and
never takes its batch-mates down with it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from codec import CodecSpec, build_codec
from pipeline.runtime.telemetry import EncodeMetrics
from pipeline.tokenize.prepare_stage import ERROR, SEGMENT

log = logging.getLogger(__name__)

# Fault injection for tests: "item_id" → the first encode of a batch holding that item raises,
# once per actor process; the retry (a new attempt of the batch) must then succeed.
FAIL_ONCE_ENV = "SEMTOK_TEST_FAIL_ONCE_ITEM"
# "item_id,item_id": encoding a segment of these items always raises (they end as encode_failed
# error rows), until the variable is gone: the "bug" that `semtok retry-failed` recovers from.
FAIL_ITEMS_ENV = "SEMTOK_TEST_FAIL_ITEMS"
# "item_id": the actor PROCESS dies (os._exit) on the first batch holding that item. "First" is
# remembered in a marker file (CRASH_MARKER_ENV, created atomically before dying), because the
# restarted actor is a fresh process: Ray must redo the batch, and the item must end exactly once.
CRASH_ONCE_ENV = "SEMTOK_TEST_CRASH_ONCE_ITEM"
CRASH_MARKER_ENV = "SEMTOK_TEST_CRASH_MARKER"


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
        self._failed_once: set[str] = set()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kinds = batch["row_kind"]
        index = np.flatnonzero(kinds == SEGMENT)
        tokens = np.empty(len(kinds), dtype=object)
        tokens[:] = [b""] * len(kinds)
        if len(index):
            _maybe_crash(batch, index)
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

    def _encode_rows(self, batch: dict[str, np.ndarray], index: np.ndarray) -> list[bytes | Exception]:
        try:
            self._maybe_fail(batch, index)
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
        _maybe_fail_always(batch, index)
        samples = torch.from_numpy(
            np.stack([np.frombuffer(batch["samples"][i], dtype=np.float32) for i in index])
        )
        valid = torch.as_tensor(batch["valid_frames"][index].astype(np.int64))
        tokens = self.codec.encode_segments(samples, valid).cpu().numpy().astype(np.uint16)
        self.stats.segments += len(index)
        return [np.ascontiguousarray(t).tobytes() for t in tokens]

    def _maybe_fail(self, batch: dict[str, np.ndarray], index: np.ndarray) -> None:
        target = os.environ.get(FAIL_ONCE_ENV)
        if not target or target in self._failed_once:
            return
        if any(batch["item_id"][i] == target for i in index):
            self._failed_once.add(target)
            raise RuntimeError(f"injected test fault for item {target!r}")


def _maybe_fail_always(batch: dict[str, np.ndarray], index: np.ndarray) -> None:
    targets = {t for t in os.environ.get(FAIL_ITEMS_ENV, "").split(",") if t}
    hit = targets.intersection(str(batch["item_id"][i]) for i in index)
    if hit:
        raise RuntimeError(f"injected persistent test fault for item(s) {sorted(hit)}")


def _maybe_crash(batch: dict[str, np.ndarray], index: np.ndarray) -> None:
    target, marker = os.environ.get(CRASH_ONCE_ENV), os.environ.get(CRASH_MARKER_ENV)
    if not target or not marker or not any(batch["item_id"][i] == target for i in index):
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # crashed once already: this is the redo
    os.write(fd, f"{os.getpid()}\n".encode())
    os.fsync(fd)
    os.close(fd)
    log.warning("injected test crash of encode actor pid %d on item %r", os.getpid(), target)
    os._exit(17)
