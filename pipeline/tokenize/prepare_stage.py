"""Stage 1 (CPU tasks): read one input unit, decode each item, cut it into codec segments.

Each unit becomes a stream of rows with one schema: `segment` rows (audio of one codec segment,
with the context the codec needs), `error` rows (an item that failed to read or decode, with its
reason) and one closing `unit` row that says how many items the unit had. Long files are cut here,
so no block downstream carries a whole long file; the driver joins segments back per item.

Decoding runs in a child process (`pipeline.io.isolated_decode`, one per worker, reused): a file that
crashes or hangs the decoder, or needs more memory than allowed, becomes an error row (stage
"decode", reason "decode_crashed" / "decode_timeout" / "out_of_memory") and the unit goes on.
Ray Data retries a task whose worker died without bound, so a crash must never reach the worker.

For what still could (a native crash in the worker itself, e.g. with ``isolate=False``), an optional
item ledger bounds the attempts: with ``ledger_dir`` set, each item's processing is bracketed by
"start"/"done" lines in ``<ledger_dir>/<unit_id>.ledger``; when a retried unit meets an item that
started ``max_item_attempts`` times without finishing, that item becomes an error row (reason
"worker_crashed") without being touched again. The ledger is a local file: it works when the retry
runs on the same node (single node, or a shared ``ledger_dir``). It brackets decoding and cutting,
not reading: skipping an item that crashes the reader would need the source to skip it unread.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from codec import CodecSpec, build_segmenter
from pipeline.io.audio_decoding import AudioDecodeError
from pipeline.io.isolated_decode import IsolatedDecoder, shared_decoder
from pipeline.io.sources import ReadPolicy, read_unit
from pipeline.records import InputUnit, ItemError, SourceItem

SEGMENT, ERROR, UNIT = "segment", "error", "unit"
WORKER_CRASHED = "worker_crashed"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def empty_row() -> dict[str, Any]:
    """Every row carries every column (a stable Arrow schema through Ray Data)."""
    return {
        "row_kind": "",
        "unit_id": "",
        "item_index": -1,
        "item_id": "",
        "source_uri": "",
        "metadata": "",
        "seg_index": -1,
        "n_segments": 0,
        "num_tokens": 0,
        "valid_frames": 0,
        "samples": b"",
        "tokens": b"",
        "duration_s": 0.0,
        "stage": "",
        "reason": "",
        "detail": "",
        "n_items": 0,
        "unit": "",
    }


def error_row(
    unit_id: str,
    index: int,
    item_id: str,
    source_uri: str,
    error: ItemError,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    row = empty_row()
    row.update(
        row_kind=ERROR,
        unit_id=unit_id,
        item_index=index,
        item_id=item_id,
        source_uri=source_uri,
        metadata=json.dumps(metadata or {}, ensure_ascii=False),
        stage=error.stage,
        reason=error.reason,
        detail=stable_detail(error.detail),
    )
    return row


def stable_detail(detail: str) -> str:
    """Error text without memory addresses, so reruns write identical error rows."""
    return _ADDRESS.sub("", detail)[:2000]


@dataclass
class PrepareStats:
    items: int = 0
    segments: int = 0
    errors_by_reason: dict[str, int] = field(default_factory=dict)


class PrepareUnit:
    """Callable for `Dataset.flat_map`: {"unit": json} → segment / error / unit rows."""

    def __init__(
        self,
        spec: CodecSpec,
        *,
        channel_policy: str = "first",
        max_audio_seconds: float | None = None,
        storage_options: dict | None = None,
        audio_column: str | None = None,
        uri_column: str | None = None,
        item_timeout_s: float | None = 300.0,
        max_decode_memory_bytes: int | None = 8 * 2**30,
        isolate: bool = True,
        decode_options: dict | None = None,
        decode_fn: str | None = None,
        ledger_dir: str | None = None,
        max_item_attempts: int = 2,
        read_policy: ReadPolicy | None = None,
    ) -> None:
        self.spec = spec
        self.channel_policy = channel_policy
        self.max_audio_seconds = max_audio_seconds
        self.storage_options = storage_options or {}
        self.audio_column = audio_column
        self.uri_column = uri_column
        self.item_timeout_s = item_timeout_s
        self.max_decode_memory_bytes = max_decode_memory_bytes
        self.isolate = isolate
        self.decode_options = dict(decode_options or {})
        self.decode_fn = decode_fn
        self.ledger_dir = ledger_dir
        self.max_item_attempts = max(1, int(max_item_attempts))
        self.read_policy = read_policy or ReadPolicy()
        self._segmenter = None
        self._decoder: IsolatedDecoder | None = None
        self._ledger: ItemLedger | None = None
        self.stats = PrepareStats()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # process-local handles, rebuilt lazily where the copy runs (the decoder is a child process)
        state.update(_decoder=None, _ledger=None, _segmenter=None)
        return state

    def decoder(self) -> IsolatedDecoder:
        """This worker's decoder (created on first use, inside the Ray worker; shared by units)."""
        if self._decoder is None:
            self._decoder = shared_decoder(
                decode_fn=self.decode_fn,
                timeout_s=self.item_timeout_s,
                max_memory_bytes=self.max_decode_memory_bytes,
                in_process=not self.isolate,
            )
        return self._decoder

    def read_items(self, unit: InputUnit) -> Iterator[SourceItem]:
        """The unit's items as this stage reads them (its storage options and read policy)."""
        return read_unit(
            unit,
            storage_options=self.storage_options,
            audio_column=self.audio_column,
            uri_column=self.uri_column,
            policy=self.read_policy,
        )

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if self._segmenter is None:
            self._segmenter = build_segmenter(self.spec)
        unit = InputUnit.from_json(row["unit"])
        count = 0
        for index, item in enumerate(self.read_items(unit)):
            count = index + 1
            yield from self._item_rows(unit.unit_id, index, item)
        closing = empty_row()
        closing.update(row_kind=UNIT, unit_id=unit.unit_id, n_items=count, unit=row["unit"])
        yield closing

    def _item_rows(self, unit_id: str, index: int, item) -> Iterator[dict[str, Any]]:
        self.stats.items += 1
        if item.error is not None:
            yield self._error(unit_id, index, item, item.error)
            return
        ledger = self._ledger_for(unit_id)
        if ledger is not None:
            attempts = ledger.unfinished(index)
            if attempts >= self.max_item_attempts:
                detail = (
                    f"the worker died {attempts} time(s) while processing this item "
                    f"(max_item_attempts={self.max_item_attempts}); not retried"
                )
                yield self._error(unit_id, index, item, ItemError("decode", WORKER_CRASHED, detail))
                ledger.mark(index, "done")
                return
            ledger.mark(index, "start")
        yield from self._decoded_rows(unit_id, index, item)
        if ledger is not None:
            ledger.mark(index, "done")

    def _decoded_rows(self, unit_id: str, index: int, item) -> Iterator[dict[str, Any]]:
        try:
            audio = self.decoder().decode(item.data, **self._decode_kwargs(item))
        except AudioDecodeError as error:
            yield self._error(unit_id, index, item, ItemError("decode", error.reason, error.detail))
            return
        segments = self._segmenter(audio.samples)
        metadata = json.dumps(item.metadata, ensure_ascii=False)
        total = int(segments.samples.shape[0])
        for seg_index in range(total):
            row = empty_row()
            row.update(
                row_kind=SEGMENT,
                unit_id=unit_id,
                item_index=index,
                item_id=item.item_id,
                source_uri=item.source_uri,
                metadata=metadata if seg_index == 0 else "",
                seg_index=seg_index,
                n_segments=total,
                num_tokens=segments.num_tokens,
                valid_frames=int(segments.valid_frames[seg_index]),
                duration_s=audio.duration_s,
                samples=np.ascontiguousarray(segments.samples[seg_index].numpy()).tobytes(),
            )
            self.stats.segments += 1
            yield row

    def _decode_kwargs(self, item) -> dict[str, Any]:
        return {
            "channel_policy": self.channel_policy,
            "name_hint": item.source_uri,
            "max_seconds": self.max_audio_seconds,
            **self.decode_options,
        }

    def _ledger_for(self, unit_id: str) -> ItemLedger | None:
        if self.ledger_dir is None:
            return None
        if self._ledger is None or self._ledger.unit_id != unit_id:
            self._ledger = ItemLedger(self.ledger_dir, unit_id)
        return self._ledger

    def _error(self, unit_id: str, index: int, item, error: ItemError) -> dict[str, Any]:
        self.stats.errors_by_reason[error.reason] = self.stats.errors_by_reason.get(error.reason, 0) + 1
        return error_row(unit_id, index, item.item_id, item.source_uri, error, item.metadata)


class ItemLedger:
    """Append-only "<index> start" / "<index> done" lines for one unit, in a local file.

    `unfinished(i)`: how many attempts at item i started and never finished (the worker died).
    Appends of short lines with O_APPEND are atomic and survive the process dying (no fsync: a lost
    node loses its ledger, which only means one more attempt).
    """

    def __init__(self, directory: str, unit_id: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.unit_id = unit_id
        self.path = os.path.join(directory, _UNSAFE.sub("_", unit_id) + ".ledger")
        self._starts: dict[int, int] = {}
        self._done: dict[int, int] = {}
        try:
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    parts = line.split()
                    if len(parts) == 2 and parts[0].isdigit():
                        counts = self._starts if parts[1] == "start" else self._done
                        counts[int(parts[0])] = counts.get(int(parts[0]), 0) + 1
        except FileNotFoundError:
            pass

    def unfinished(self, index: int) -> int:
        return max(0, self._starts.get(index, 0) - self._done.get(index, 0))

    def mark(self, index: int, what: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{index} {what}\n".encode())
        finally:
            os.close(fd)
