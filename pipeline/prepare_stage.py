"""Stage 1 (CPU tasks): read one input unit, decode each item, cut it into codec segments.

Each unit becomes a stream of rows with one schema: `segment` rows (audio of one codec segment,
with the context the codec needs), `error` rows (an item that failed to read or decode, with its
reason) and one closing `unit` row that says how many items the unit had. Long files are cut here,
so no block downstream carries a whole long file; the driver joins segments back per item.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from codec import CodecSpec, build_segmenter
from pipeline.audio_decoding import AudioDecodeError, decode_audio
from pipeline.records import InputUnit, ItemError
from pipeline.sources import read_unit

SEGMENT, ERROR, UNIT = "segment", "error", "unit"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def empty_row() -> dict[str, Any]:
    """Every row carries every column (a stable Arrow schema through Ray Data)."""
    return {
        "row_kind": "", "unit_id": "", "item_index": -1, "item_id": "", "source_uri": "",
        "metadata": "", "seg_index": -1, "n_segments": 0, "num_tokens": 0, "valid_frames": 0,
        "samples": b"", "tokens": b"", "duration_s": 0.0, "stage": "", "reason": "", "detail": "",
        "n_items": 0, "unit": "",
    }


def error_row(unit_id: str, index: int, item_id: str, source_uri: str, error: ItemError,
              metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    row = empty_row()
    row.update(row_kind=ERROR, unit_id=unit_id, item_index=index, item_id=item_id,
               source_uri=source_uri, metadata=json.dumps(metadata or {}, ensure_ascii=False),
               stage=error.stage, reason=error.reason, detail=stable_detail(error.detail))
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

    def __init__(self, spec: CodecSpec, *, channel_policy: str = "first",
                 max_audio_seconds: float | None = None, storage_options: dict | None = None,
                 audio_column: str | None = None, uri_column: str | None = None) -> None:
        self.spec = spec
        self.channel_policy = channel_policy
        self.max_audio_seconds = max_audio_seconds
        self.storage_options = storage_options or {}
        self.audio_column = audio_column
        self.uri_column = uri_column
        self._segmenter = None
        self.stats = PrepareStats()

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if self._segmenter is None:
            self._segmenter = build_segmenter(self.spec)
        unit = InputUnit.from_json(row["unit"])
        count = 0
        for index, item in enumerate(read_unit(unit, storage_options=self.storage_options,
                                               audio_column=self.audio_column,
                                               uri_column=self.uri_column)):
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
        try:
            audio = decode_audio(item.data, channel_policy=self.channel_policy,
                                 name_hint=item.source_uri, max_seconds=self.max_audio_seconds)
        except AudioDecodeError as error:
            yield self._error(unit_id, index, item, ItemError("decode", error.reason, error.detail))
            return
        segments = self._segmenter(audio.samples)
        metadata = json.dumps(item.metadata, ensure_ascii=False)
        total = int(segments.samples.shape[0])
        for seg_index in range(total):
            row = empty_row()
            row.update(
                row_kind=SEGMENT, unit_id=unit_id, item_index=index, item_id=item.item_id,
                source_uri=item.source_uri, metadata=metadata if seg_index == 0 else "",
                seg_index=seg_index, n_segments=total, num_tokens=segments.num_tokens,
                valid_frames=int(segments.valid_frames[seg_index]), duration_s=audio.duration_s,
                samples=np.ascontiguousarray(segments.samples[seg_index].numpy()).tobytes(),
            )
            self.stats.segments += 1
            yield row

    def _error(self, unit_id: str, index: int, item, error: ItemError) -> dict[str, Any]:
        self.stats.errors_by_reason[error.reason] = self.stats.errors_by_reason.get(error.reason, 0) + 1
        return error_row(unit_id, index, item.item_id, item.source_uri, error, item.metadata)
