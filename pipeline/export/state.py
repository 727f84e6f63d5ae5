"""An export folder's own records, and the two ways bytes reach it whole.

An export folder (DIR) holds the format's files plus a state folder (`state_dir`, named per
format so the format's own reader never sees it) with:

    plan.json            written once, first: the snapshot being exported (each unit's tokens
                         file and sha256, the shard index it becomes, the format's options)
    parts/<unit>.json    one per exported unit, published after that unit's data: the commit point
    export.json          written last: the export's index; present = complete
    _tmp/                temporaries of local publishes (removed at the start of every run)

The same order as a semtok output's manifest (pipeline/dataset/commit.py): data first, then its
record, names fixed by the plan; a rerun trusts only records, overwrites uncommitted leftovers at
the same names, and so never duplicates or loses an item.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec

from pipeline.dataset.layout import check_safe_id, is_local, publish
from pipeline.io.storage import with_retries

PLAN = "plan.json"
DONE = "export.json"
PARTS_DIR = "parts"
TMP_DIR = "_tmp"
PLAN_KIND = "semtok.export.plan"
DONE_KIND = "semtok.export"
STATE_FORMAT_VERSION = 1


class ExportError(ValueError):
    """A user-facing export problem (random weights, a folder holding something else, a source
    that changed under a resumed export); one line, exit status 2 from the CLI."""


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def json_bytes(value: Any) -> bytes:
    return (json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


@dataclass(frozen=True)
class PlannedUnit:
    """One committed unit of the snapshot and the shard it becomes."""

    index: int  # position in the plan: shard number, order of the flat stream
    unit_id: str
    tokens_path: str  # relative to the dataset version
    sha256: str  # of that tokens file, as the manifest listed it when the plan was made
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "unit_id": self.unit_id,
            "tokens_path": self.tokens_path,
            "sha256": self.sha256,
            "rows": self.rows,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlannedUnit:
        return cls(
            index=int(data["index"]),
            unit_id=check_safe_id(str(data["unit_id"]), "unit id"),
            tokens_path=str(data["tokens_path"]),
            sha256=str(data["sha256"]),
            rows=int(data["rows"]),
        )


@dataclass(frozen=True)
class PartFile:
    """A file of one part, path relative to DIR."""

    rel: str
    data: bytes


class ExportState:
    """The export folder DIR on its file system: paths, records, listing, publishing."""

    def __init__(self, fs: fsspec.AbstractFileSystem, dest_path: str, state_dir: str) -> None:
        self.fs = fs
        self.root = dest_path.rstrip("/") or "/"
        self.state_dir = state_dir

    # --- paths ---------------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        if rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"not a relative path inside the export: {rel!r}")
        return posixpath.join(self.root, rel)

    def state_rel(self, name: str) -> str:
        return f"{self.state_dir}/{name}"

    def part_rel(self, unit_id: str) -> str:
        return self.state_rel(f"{PARTS_DIR}/{check_safe_id(unit_id, 'unit id')}.json")

    @property
    def tmp_dir(self) -> str | None:
        """Where local publishes stage their temporaries (inside DIR: same file system, and
        inside the state folder, so no format reader sees a leftover)."""
        return self.path(self.state_rel(TMP_DIR)) if is_local(self.fs) else None

    # --- reading -------------------------------------------------------------------------------
    def read(self, rel: str) -> bytes:
        """The bytes of a file under DIR (with retries)."""
        path = self.path(rel)
        return with_retries(lambda: bytes(self.fs.cat_file(path)))

    def _read_json(self, rel: str) -> Any | None:
        """The JSON at `rel`, or None when absent or damaged (a damaged record counts as absent:
        what it recorded is redone)."""
        try:
            raw = self.read(rel)
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None

    def read_plan(self) -> dict[str, Any] | None:
        plan = self._read_json(self.state_rel(PLAN))
        if plan is None:
            return None
        if (
            not isinstance(plan, dict)
            or plan.get("kind") != PLAN_KIND
            or not isinstance(plan.get("units"), list)
        ):
            raise ExportError(f"{self.state_rel(PLAN)} in the export folder is not a semtok export plan")
        return plan

    def read_done(self) -> dict[str, Any] | None:
        done = self._read_json(self.state_rel(DONE))
        return done if isinstance(done, dict) and done.get("kind") == DONE_KIND else None

    def read_part(self, unit_id: str) -> dict[str, Any] | None:
        record = self._read_json(self.part_rel(unit_id))
        return record if isinstance(record, dict) and record.get("unit_id") == unit_id else None

    def listing(self) -> dict[str, int]:
        """Every file under DIR: path relative to DIR → size (fresh: listing caches dropped)."""
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(self.root)
        try:
            found = with_retries(lambda: self.fs.find(self.root, detail=True))
        except FileNotFoundError:
            return {}
        prefix = self.root.rstrip("/") + "/"
        out = {}
        for name, info in found.items():
            if info.get("type") == "directory" or not name.startswith(prefix):
                continue
            out[name[len(prefix) :]] = int(info.get("size") or 0)
        return out

    # --- writing -------------------------------------------------------------------------------
    def publish(self, rel: str, data: bytes) -> dict[str, Any]:
        """Publish `data` at `rel` atomically; returns its file record (path, bytes, sha256)."""
        with_retries(lambda: publish(self.fs, self.path(rel), data, tmp_dir=self.tmp_dir))
        return {"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def publish_json(self, rel: str, value: Any) -> None:
        self.publish(rel, json_bytes(value))

    def publish_stream(self, rel: str, chunks: Iterable[bytes]) -> dict[str, Any]:
        """Publish a file too large to hold in memory, whole or not at all.

        Local: a temporary file, fsync, rename (like `pipeline.dataset.layout.publish`, which takes
        bytes). Object stores: one streamed upload; s3fs completes its multipart upload only on
        close, so on failure the upload is aborted and no object appears. Not retried: the chunks
        are consumed (a rerun of the export redoes it).
        """
        digest = hashlib.sha256()
        size = 0
        target = self.path(rel)
        if is_local(self.fs):
            final = self.fs._strip_protocol(target)
            tmp_parent = self.fs._strip_protocol(self.tmp_dir or posixpath.dirname(target))
            os.makedirs(tmp_parent, exist_ok=True)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            tmp = os.path.join(tmp_parent, f"{os.path.basename(final)}.tmp-{uuid.uuid4().hex}")
            try:
                with open(tmp, "wb") as handle:
                    for chunk in chunks:
                        handle.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            return {"path": rel, "bytes": size, "sha256": digest.hexdigest()}
        handle = self.fs.open(target, "wb")
        try:
            for chunk in chunks:
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        except BaseException:
            with contextlib.suppress(Exception):
                handle.discard()  # s3fs: abort the multipart upload
            handle.closed = True  # never let close() (or __del__) commit a partial object
            raise
        handle.close()
        return {"path": rel, "bytes": size, "sha256": digest.hexdigest()}

    def remove(self, rel: str, *, recursive: bool = False) -> None:
        """Remove a file or folder under DIR; absent is fine."""
        target = self.path(rel)
        with contextlib.suppress(FileNotFoundError):
            if self.fs.exists(target):
                self.fs.rm(target, recursive=recursive)

    def clear_tmp(self) -> None:
        """Leftover temporaries of a killed run (local only; object stores have none)."""
        if self.tmp_dir is not None:
            self.remove(self.state_rel(TMP_DIR), recursive=True)
