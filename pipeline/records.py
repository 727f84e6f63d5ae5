"""Data model shared by the pipeline stages.

Units and items are plain dataclasses so that they can be turned into Ray Data rows (JSON
strings / dicts) without pulling Ray into the modules that define them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ItemError:
    """Why one item failed: errors are data rows, never only log lines."""

    stage: str  # "plan" | "read" | "decode" | "encode" | "write"
    reason: str  # short stable code, e.g. "unreadable_object", "undecodable"
    detail: str  # human-readable message (never contains credentials)

    def to_dict(self) -> dict[str, str]:
        """JSON-able form, for error tables."""
        return {"stage": self.stage, "reason": self.reason, "detail": self.detail}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ItemError:
        return cls(stage=str(d["stage"]), reason=str(d["reason"]), detail=str(d["detail"]))


@dataclass(frozen=True)
class InputUnit:
    """One independently readable and committable slice of the input.

    ``root`` is the input root URI the unit was planned from; item ids are made relative to it
    so they stay readable and do not depend on the bucket or local mount point.
    """

    unit_id: str  # [A-Za-z0-9._-], <= 120 chars; same input -> same id
    kind: str  # "files" | "tar" | "parquet" | "manifest"
    uris: tuple[str, ...]  # "files": member audio files; others: exactly one uri
    row_group: int | None = None  # parquet: one row group per unit (None: footer unreadable)
    row_range: tuple[int, int] | None = None  # manifest: rows [start, stop)
    root: str = ""  # input root URI (directory) that item ids are relative to
    # What each of `uris` was when planned ("size:…;mtime:…" or "size:…;etag:…"): a rerun that
    # finds another stamp re-tokenizes the unit, `verify --input` reports it changed.
    stamps: tuple[str, ...] = ()
    id_prefix: str = ""  # put before every item id (several input roots in one output)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (units travel through Ray Data rows as JSON strings)."""
        return {
            "unit_id": self.unit_id,
            "kind": self.kind,
            "uris": list(self.uris),
            "row_group": self.row_group,
            "row_range": list(self.row_range) if self.row_range is not None else None,
            "root": self.root,
            **({"stamps": list(self.stamps)} if self.stamps else {}),
            **({"id_prefix": self.id_prefix} if self.id_prefix else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputUnit:
        rr = d.get("row_range")
        rg = d.get("row_group")
        return cls(
            unit_id=str(d["unit_id"]),
            kind=str(d["kind"]),
            uris=tuple(str(u) for u in d["uris"]),
            row_group=int(rg) if rg is not None else None,
            row_range=(int(rr[0]), int(rr[1])) if rr is not None else None,
            root=str(d.get("root") or ""),
            stamps=tuple(str(s) for s in d.get("stamps") or ()),
            id_prefix=str(d.get("id_prefix") or ""),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> InputUnit:
        return cls.from_dict(json.loads(s))


@dataclass
class SourceItem:
    """One input item as read from storage, before decoding."""

    item_id: str  # unique within the dataset, stable across runs, a safe relative path
    source_uri: str  # file uri; "<tar uri>#<member>"; "<parquet uri>#row=<n>"; manifest: audio uri
    data: bytes | None  # encoded audio bytes (None when error or path is set)
    metadata: dict[str, Any] = field(default_factory=dict)  # JSON-able, carried to the output
    error: ItemError | None = None
    # a big item read with a spooler: the local file holding its bytes (data is None); the reader
    # deletes it when the next item is asked for (pipeline.io.spool)
    path: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class DecodedAudio:
    """Audio ready for the codec: float32 [N], mono, 16 kHz, C-contiguous."""

    samples: np.ndarray
    source_sample_rate: int
    source_channels: int

    @property
    def duration_s(self) -> float:
        return float(self.samples.shape[0]) / 16000.0
