"""Stage 1 (CPU tasks): read one input unit, decode each item, cut it into codec segments.

Each unit becomes a stream of rows with one schema: `segment` rows (audio of one codec segment,
with the context the codec needs), `error` rows (an item that failed to read or decode, with its
reason) and one closing `unit` row that says how many items the unit had. Long files are cut here,
so no block downstream carries a whole long file; the driver joins segments back per item.

Decoding runs in a child process (`pipeline.io.isolated_decode`, one per worker, reused): a file that
crashes or hangs the decoder, or needs more memory than allowed, becomes an error row (stage
"decode", reason "decode_crashed" / "decode_timeout" / "out_of_memory") and the unit goes on.
Ray Data retries a task whose worker died without bound, so a crash must never reach the worker.

Long items never sit whole in memory (``stream_min_seconds``, default 10 min, or longer): the
decode process streams them, resampled, to
a float32 spill file on local disk (``spill_dir``) and returns its path; this stage takes the
official DC offset over the memory-mapped file (file-backed pages, reclaimable, unmapped right
after), then reads and cuts 16 segments at a time, yielding rows as it goes (Ray Data packs them
into bounded blocks). The segments are the in-memory path's, bit for bit.

Big items never sit whole in this worker either (``spool_min_bytes``, default 64 MiB, or larger): the
reader copies their encoded bytes from storage in 8 MiB chunks to a local file in the same folder
(`pipeline.io.spool`) and the decode process maps that file; neither process holds the item. (An
item already in memory, a parquet cell, of SPOOL_MIN_BYTES or more also reaches the decode process
through a file, not the pipe.) Spill and spool files are deleted when their item ends however it
ends; files of a worker that died are deleted by the next prepare worker on that node (file names
carry the worker's pid), so no per-run folder is needed.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from codec import CodecSpec, Segments, build_segmenter
from pipeline.io.audio_decoding import DEFAULT_MAX_SPILL_BYTES, AudioDecodeError, SpilledAudio
from pipeline.io.isolated_decode import IsolatedDecoder, shared_decoder
from pipeline.io.sources import ReadPolicy, read_unit
from pipeline.io.spill_files import DEFAULT_STREAM_MIN_SECONDS, new_spill_path, remove_quietly, spill_folder
from pipeline.io.spool import DEFAULT_SPOOL_MIN_BYTES, Spooler
from pipeline.records import InputUnit, ItemError, SourceItem

SEGMENT, ERROR, UNIT = "segment", "error", "unit"
WORKER_CRASHED = "worker_crashed"
SEGMENT_BATCH = 16  # segments cut from a spill file at a time (~10 MB)
SPOOL_MIN_BYTES = DEFAULT_SPOOL_MIN_BYTES  # larger items reach the decode process through a file it maps
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
    streamed: int = 0  # items that went through a spill file
    spooled: int = 0  # items the reader copied to a local file instead of memory
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
        stream_min_seconds: float | None = DEFAULT_STREAM_MIN_SECONDS,
        max_spill_bytes: int | None = DEFAULT_MAX_SPILL_BYTES,
        spill_dir: str | None = None,
        spool_min_bytes: int | None = SPOOL_MIN_BYTES,
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
        # None: no streaming (every item in memory, too_large over max_decoded_bytes)
        self.stream_min_seconds = stream_min_seconds
        self.max_spill_bytes = max_spill_bytes
        self.spill_dir = spill_dir
        # None: every item read into memory; else items this big or bigger are spooled to disk
        self.spool_min_bytes = spool_min_bytes
        self._spooler: Spooler | None = None
        self._segmenter: Callable[[Any], Segments] | None = None
        self._segment_plan: Callable[[int], Any] | None = None
        self._plan_checked = False  # whether the codec was asked for segment plans yet
        self._decoder: IsolatedDecoder | None = None
        self._ledger: ItemLedger | None = None
        self.stats = PrepareStats()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # process-local handles, rebuilt lazily where the copy runs (the decoder is a child process)
        state.update(
            _decoder=None,
            _ledger=None,
            _spooler=None,
            _segmenter=None,
            _segment_plan=None,
            _plan_checked=False,
        )
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
            spool=self.spooler(),
        )

    def spooler(self) -> Spooler | None:
        """Where the reader puts big items (None when ``spool_min_bytes`` is None)."""
        if self.spool_min_bytes is None:
            return None
        if self._spooler is None:
            self._spooler = Spooler(spill_folder(self.spill_dir), self.spool_min_bytes)
        return self._spooler

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
        spill = self.spill_path()
        try:
            try:
                kwargs = self._decode_kwargs(item, spill)
                if item.path is not None:  # spooled by the reader: decoded from its file
                    self.stats.spooled += 1
                    try:
                        audio = self.decoder().decode_file(item.path, **kwargs)
                    finally:  # decoded or failed: the encoded bytes are not needed again
                        remove_quietly(item.path)
                else:
                    big = len(item.data) >= SPOOL_MIN_BYTES
                    spool = spill + ".in" if spill is not None and big else None
                    audio = self.decoder().decode(item.data, spool_path=spool, **kwargs)
            except AudioDecodeError as error:
                yield self._error(unit_id, index, item, ItemError("decode", error.reason, error.detail))
                return
            if isinstance(audio, SpilledAudio):
                yield from self._spilled_rows(unit_id, index, item, audio, spill)
                return
            duration_s = audio.duration_s
            segments = self._cut(audio.samples)
            del audio  # only the segments from here on
            rows = _SegmentRows(unit_id, index, item, segments, duration_s)
            yield from rows.emit(segments, 0, self.stats)
        finally:
            if spill is not None:
                remove_quietly(spill)

    def _spilled_rows(
        self, unit_id: str, index: int, item, audio: SpilledAudio, spill: str | None
    ) -> Iterator[dict[str, Any]]:
        """Segments of a streamed item, cut from its spill file `SEGMENT_BATCH` at a time."""
        self.stats.streamed += 1
        expected = audio.num_samples * 4
        size = os.path.getsize(spill) if spill is not None and os.path.exists(spill) else -1
        if audio.path != spill or size != expected:  # our own child wrote it: a bug, not bad data
            detail = f"spill file {audio.path}: {size} bytes, expected {expected} at {spill}"
            yield self._error(unit_id, index, item, ItemError("decode", "spill_failed", detail))
            return
        planner = self._planner()
        if planner is None:  # a codec without segment plans: cut it in memory
            samples = np.fromfile(spill, dtype=np.float32, count=audio.num_samples)
            segments = self._cut(samples)
            del samples
            rows = _SegmentRows(unit_id, index, item, segments, audio.duration_s)
            yield from rows.emit(segments, 0, self.stats)
            return
        plan = planner(audio.num_samples)
        try:
            os.truncate(spill, plan.padded_length * 4)  # the official zero padding (a sparse tail)
            mapped = np.memmap(spill, dtype=np.float32, mode="r", shape=(plan.padded_length,))
            dc = plan.dc_offset(mapped)
            del mapped  # unmapped: its pages leave this process
        except OSError as exc:  # before any row: the item is an error row (later, the task retries)
            detail = f"spill file {spill}: {exc.strerror or exc}"
            yield self._error(unit_id, index, item, ItemError("decode", "spill_failed", detail))
            return
        rows = _SegmentRows(unit_id, index, item, plan, audio.duration_s)
        with open(spill, "rb", buffering=0) as fh:
            for start in range(0, plan.count, SEGMENT_BATCH):
                stop = min(plan.count, start + SEGMENT_BATCH)
                lo, hi = plan.window(start, stop)
                window = np.empty(hi - lo, dtype=np.float32)
                fh.seek(lo * 4)
                if fh.readinto(window.data.cast("B")) != window.nbytes:
                    raise OSError(f"short read from spill file {spill}")
                yield from rows.emit(plan.segments(window, start, stop, dc), start, self.stats)

    def _cut(self, samples: np.ndarray) -> Segments:
        if self._segmenter is None:
            self._segmenter = build_segmenter(self.spec)
        segmenter: Callable[[Any], Segments] = self._segmenter  # takes numpy too (torch.as_tensor)
        return segmenter(samples)

    def _planner(self) -> Callable[[int], Any] | None:
        """The codec's segment plans for spilled items (None for a codec that has none)."""
        if not self._plan_checked:
            factory = getattr(self.spec.codec_class(), "segment_plan", None)  # optional for a codec
            self._segment_plan = factory(dict(self.spec.options)) if factory is not None else None
            self._plan_checked = True
        return self._segment_plan

    def spill_path(self) -> str | None:
        """A fresh spill file name for the next item (None when streaming is off); the folder is
        created, and cleaned of dead workers' files, on first use in this process."""
        if self.stream_min_seconds is None:
            return None
        return new_spill_path(spill_folder(self.spill_dir))

    def _decode_kwargs(self, item, spill: str | None = None) -> dict[str, Any]:
        kwargs = {
            "channel_policy": self.channel_policy,
            "name_hint": item.source_uri,
            "max_seconds": self.max_audio_seconds,
            **self.decode_options,
        }
        if spill is not None:
            kwargs.update(
                spill_path=spill,
                stream_min_seconds=self.stream_min_seconds,
                max_spill_bytes=self.max_spill_bytes,
            )
        return kwargs

    def _ledger_for(self, unit_id: str) -> ItemLedger | None:
        if self.ledger_dir is None:
            return None
        if self._ledger is None or self._ledger.unit_id != unit_id:
            self._ledger = ItemLedger(self.ledger_dir, unit_id)
        return self._ledger

    def _error(self, unit_id: str, index: int, item, error: ItemError) -> dict[str, Any]:
        self.stats.errors_by_reason[error.reason] = self.stats.errors_by_reason.get(error.reason, 0) + 1
        return error_row(unit_id, index, item.item_id, item.source_uri, error, item.metadata)


class _SegmentRows:
    """Segment rows of one item; every row says how many segments the item has (the driver counts)."""

    def __init__(self, unit_id: str, index: int, item, whole: Any, duration_s: float) -> None:
        """`whole`: the item's `Segments`, or its `SegmentPlan` (anything with its count and tokens)."""
        self.unit_id, self.index, self.item = unit_id, index, item
        count = getattr(whole, "count", None)
        self.total = int(whole.samples.shape[0] if count is None else count)
        self.num_tokens = int(whole.num_tokens)
        self.duration_s = duration_s
        self.metadata = json.dumps(item.metadata, ensure_ascii=False)

    def emit(self, segments, first: int, stats: PrepareStats) -> Iterator[dict[str, Any]]:
        """Rows for `segments` (a `Segments` batch whose first segment has index `first`)."""
        for offset in range(int(segments.samples.shape[0])):
            seg_index = first + offset
            row = empty_row()
            row.update(
                row_kind=SEGMENT,
                unit_id=self.unit_id,
                item_index=self.index,
                item_id=self.item.item_id,
                source_uri=self.item.source_uri,
                metadata=self.metadata if seg_index == 0 else "",
                seg_index=seg_index,
                n_segments=self.total,
                num_tokens=self.num_tokens,
                valid_frames=int(segments.valid_frames[offset]),
                duration_s=self.duration_s,
                samples=np.ascontiguousarray(segments.samples[offset].numpy()).tobytes(),
            )
            stats.segments += 1
            yield row


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
