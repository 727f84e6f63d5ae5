"""Stage 3 (committer actors, pipeline/tokenize/commit_stage.py): join segment tokens back into
items, and items into finished units.

Rows of one unit arrive in any order, across many batches. A unit is finished when its closing
`unit` row has arrived and every one of its items is accounted for: all segments encoded (a token
row) or an error (an error row). Only unfinished units are held, and only their tokens (a few KB
per minute of audio), so a committer's memory stays flat however large the corpus is.

Ray Data redoes work after faults (a restarted actor redoes its in-flight batch; a lost node's
blocks are rebuilt), so a row may arrive twice. Segments are keyed, never counted, and rows of a
unit already finished are ignored: a redelivered row can neither finish an item early nor add one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.records import InputUnit
from pipeline.tokenize.prepare_stage import ERROR, SEGMENT, UNIT


@dataclass
class _Item:
    item_id: str = ""
    source_uri: str = ""
    metadata: str = "{}"
    duration_s: float = 0.0
    num_tokens: int = 0
    n_segments: int = -1
    segments: dict[int, bytes] = field(default_factory=dict)
    failed_segments: set[int] = field(default_factory=set)
    error: dict[str, str] | None = None

    @property
    def done(self) -> bool:
        if self.error is not None and self.n_segments <= 0:
            return True
        accounted = len(self.failed_segments | self.segments.keys())
        return self.n_segments >= 0 and accounted >= self.n_segments


@dataclass
class _Unit:
    unit: InputUnit | None = None
    n_items: int | None = None
    items: dict[int, _Item] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return (
            self.n_items is not None
            and len(self.items) == self.n_items
            and all(item.done for item in self.items.values())
        )


@dataclass
class FinishedUnit:
    unit: InputUnit
    token_rows: list[dict[str, Any]]
    error_rows: list[dict[str, Any]]

    @property
    def audio_seconds(self) -> float:
        return sum(row["duration_s"] for row in self.token_rows)


class UnitAssembler:
    def __init__(self, streams: int = 2) -> None:
        self.streams = streams
        self._units: dict[str, _Unit] = {}
        self._finished: set[str] = set()
        self.redelivered = 0  # rows ignored because their unit was already finished

    @property
    def pending(self) -> int:
        return len(self._units)

    def add(self, batch: dict[str, np.ndarray]) -> Iterator[FinishedUnit]:
        touched: set[str] = set()
        for i in range(len(batch["row_kind"])):
            unit_id = str(batch["unit_id"][i])
            if unit_id in self._finished:
                self.redelivered += 1
                continue
            touched.add(unit_id)
            state = self._units.setdefault(unit_id, _Unit())
            kind = batch["row_kind"][i]
            if kind == UNIT:
                state.unit = InputUnit.from_json(str(batch["unit"][i]))
                state.n_items = int(batch["n_items"][i])
                continue
            item = state.items.setdefault(int(batch["item_index"][i]), _Item())
            item.item_id = str(batch["item_id"][i])
            item.source_uri = str(batch["source_uri"][i])
            if batch["metadata"][i]:
                item.metadata = str(batch["metadata"][i])
            if kind == SEGMENT:
                item.n_segments = int(batch["n_segments"][i])
                item.num_tokens = int(batch["num_tokens"][i])
                item.duration_s = float(batch["duration_s"][i])
                item.segments[int(batch["seg_index"][i])] = bytes(batch["tokens"][i])
            elif kind == ERROR:
                if item.error is None:
                    item.error = {
                        "stage": str(batch["stage"][i]),
                        "reason": str(batch["reason"][i]),
                        "detail": str(batch["detail"][i]),
                    }
                segments = int(batch["n_segments"][i])
                if segments > 0:  # a segment that failed to encode
                    item.n_segments = segments
                    item.failed_segments.add(int(batch["seg_index"][i]))
        for unit_id in sorted(touched):
            state = self._units[unit_id]
            if state.done:
                del self._units[unit_id]
                self._finished.add(unit_id)
                yield self._finish(state)

    def _finish(self, state: _Unit) -> FinishedUnit:
        token_rows, error_rows = [], []
        for _, item in sorted(state.items.items()):
            if item.error is not None:
                error_rows.append({"id": item.item_id, "source_uri": item.source_uri, **item.error})
                continue
            parts = [np.frombuffer(item.segments[s], dtype=np.uint16) for s in range(item.n_segments)]
            tokens = np.concatenate(parts).reshape(-1, self.streams)[: item.num_tokens]
            token_rows.append(
                {
                    "id": item.item_id,
                    "semantic_tokens": tokens[:, 0].copy(),
                    "acoustic_tokens": tokens[:, 1].copy(),
                    "n_frames": int(tokens.shape[0]),
                    "duration_s": item.duration_s,
                    "source_uri": item.source_uri,
                    "metadata": json.loads(item.metadata or "{}"),
                }
            )
        assert state.unit is not None
        return FinishedUnit(state.unit, token_rows, error_rows)
