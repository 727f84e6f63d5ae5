"""Exactly-once output: atomic per-unit commit and the manifest that readers trust.

Exactly once comes from naming and order, not from retries:
- a unit always writes the same final names (`OutputLayout`), so a rerun overwrites, never adds;
- every object is published whole (`publish`: tmp + rename locally, one PUT on object stores);
- data is published before the unit's manifest entry; a unit is committed iff
  `_manifest/<unit_id>.json` exists;
- readers list the manifest and read only the files it names, so leftovers of a crashed attempt
  (data published, manifest not) are never read.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset.layout import (
    OutputLayout,
    attempt_run_id,
    check_safe_id,
    dataset_version,
    fingerprint_digest,
    is_local,
    new_attempt_id,
    publish,
)
from pipeline.dataset.lease import OutputLease, read_lease
from pipeline.dataset.manifest import FORMATS, SLIM, entry_formats, entry_problem, json_bytes
from pipeline.dataset.parquet_writer import (
    errors_table,
    parquet_bytes,
    tokens_table,
)
from pipeline.dataset.webdataset_writer import shard_bytes
from pipeline.io.storage import redact_value

log = logging.getLogger(__name__)

__all__ = ["UnitCommit", "add_webdataset_twin", "cleanup_tmp", "commit_unit"]

# Without the lease, attempts of unknown runs younger than this may be in flight: kept.
FOREIGN_MIN_AGE_S = 3600.0


@dataclass(frozen=True)
class UnitCommit:
    """What a commit published: the manifest entry and where it lies."""

    unit_id: str
    manifest_path: str
    entry: dict[str, Any] = field(repr=False)

    @property
    def files(self) -> list[dict[str, Any]]:
        return self.entry["files"]


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _remove_quietly(fs: fsspec.AbstractFileSystem, path: str, recursive: bool = False) -> None:
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(path):
            fs.rm(path, recursive=recursive)


def commit_unit(
    fs: fsspec.AbstractFileSystem,
    layout: OutputLayout,
    unit_id: str,
    *,
    token_rows: Iterable[Mapping[str, Any]],
    error_rows: Iterable[Mapping[str, Any]] = (),
    fingerprint: Mapping[str, Any],
    formats: Sequence[str] = ("parquet",),
    unit_info: Mapping[str, Any] | None = None,
    run_id: str = "",
    before_manifest: Callable[[], None] | None = None,
) -> UnitCommit:
    """Publish one unit's outputs, then its manifest entry; safe to repeat after any crash.

    Files: the token Parquet always (possibly 0 rows, so every committed unit has one); the
    errors Parquet only when there are errors; the tar twin when "webdataset" is in `formats` and
    there are token rows. Outputs of this unit at final names not in the new list (left by an
    earlier attempt) are removed after the manifest is published. `before_manifest` is a test
    hook called between the data and the manifest (a crash there must leave the unit
    uncommitted).

    The entry records `formats` (those asked for, so a later `--format webdataset` run can tell
    which units lack the tar twin: `entry_formats`, `add_webdataset_twin`). Credentials never
    reach the output: source URIs and error details are redacted by the writers, and every string
    of `unit_info` (uris, root) by `redact_value`. Temporaries go to `_tmp/<run id>-<random>/`.
    """
    check_safe_id(unit_id, "unit id")
    unknown = set(formats) - set(FORMATS)
    if unknown or "parquet" not in formats:
        raise ValueError(f"formats must include 'parquet' and be among {FORMATS}, got {formats}")
    fp = dict(fingerprint)
    if dataset_version(fp) != layout.version:
        raise ValueError(
            f"fingerprint belongs to version {dataset_version(fp)!r}, layout is {layout.version!r}:"
            " build the layout with OutputLayout.for_fingerprint"
        )
    token_rows = list(token_rows)
    error_rows = list(error_rows)
    tokens = tokens_table(token_rows, fp)
    errors = errors_table(error_rows)

    outputs: list[tuple[str, str, int, bytes]] = [
        ("tokens", layout.tokens_rel(unit_id), tokens.num_rows, parquet_bytes(tokens))
    ]
    if errors.num_rows:
        outputs.append(("errors", layout.errors_rel(unit_id), errors.num_rows, parquet_bytes(errors)))
    if "webdataset" in formats and token_rows:
        outputs.append(("webdataset", layout.wds_rel(unit_id), len(token_rows), shard_bytes(token_rows, fp)))

    attempt_id = new_attempt_id(run_id)
    tmp_dir = layout.tmp_dir(attempt_id) if is_local(fs) else None
    files = []
    try:
        for kind, rel, rows, data in outputs:
            publish(fs, layout.path(rel), data, tmp_dir=tmp_dir)
            files.append(
                {
                    "kind": kind,
                    "path": rel,
                    "rows": rows,
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
        if before_manifest is not None:
            before_manifest()
        n_frames = tokens.column("n_frames").to_numpy()
        entry = {
            "unit_id": unit_id,
            "unit_info": redact_value(dict(unit_info or {})),
            "files": files,
            "formats": [f for f in FORMATS if f in formats],
            "n_items": len(token_rows) + len(error_rows),
            "n_tokens_rows": len(token_rows),
            "n_error_rows": len(error_rows),
            "n_frames": int(n_frames.sum()) if len(n_frames) else 0,
            "audio_seconds": float(sum(float(r["duration_s"]) for r in token_rows)),
            "dataset_version": layout.version,
            "fingerprint_digest": fingerprint_digest(fp),
            "committed_at": _now_iso(),
            "run_id": run_id,
            "attempt_id": attempt_id,
        }
        manifest_path = layout.manifest_path(unit_id)
        publish(fs, manifest_path, json_bytes(entry), tmp_dir=tmp_dir)
    finally:
        if tmp_dir is not None:
            _remove_quietly(fs, tmp_dir, recursive=True)

    written = {f["path"] for f in files}
    stale = [layout.errors_rel(unit_id), layout.wds_rel(unit_id)]
    for rel in stale:
        if rel not in written:
            _remove_quietly(fs, layout.path(rel))
    return UnitCommit(unit_id=unit_id, manifest_path=manifest_path, entry=entry)


def _age_s(info: Mapping[str, Any], now: float) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "created", "updated"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return now - float(value)
        if isinstance(value, dt.datetime):
            return now - value.timestamp()
    return None


def _attempt_age_s(fs: fsspec.AbstractFileSystem, info: Mapping[str, Any], now: float) -> float | None:
    """Age of an attempt folder = age of its youngest file (object stores have no folder times)."""
    ages = []
    if info.get("type") == "directory":
        try:
            found = fs.find(info["name"], detail=True)
        except FileNotFoundError:
            found = {}
        ages = [_age_s(f, now) for f in found.values()]
    if not ages or any(a is None for a in ages):
        return _age_s(info, now)
    return min(a for a in ages if a is not None)


def cleanup_tmp(
    fs: fsspec.AbstractFileSystem,
    layout: OutputLayout,
    *,
    min_age_s: float = 0.0,
    lease: OutputLease | None = None,
) -> list[str]:
    """Remove leftovers of interrupted attempts (`_tmp/<attempt>/`); returns what was removed.

    Never deletes a live run's in-flight temporaries. Attempt folders are named
    `<run id>-<random>` (`new_attempt_id`), and the version's lease says which run may be writing:
    - when another run holds a live lease (not the caller's `lease`), that run's attempts are
      kept, and so are attempts of unknown runs younger than FOREIGN_MIN_AGE_S; attempts of other
      runs are leftovers (only the lease holder writes) and go;
    - when the caller holds the lease (pass it), or nobody does (no lock, or a stale one), no live
      writer that respects the lease exists: every attempt goes, the caller's own included (call
      this when your commits are done).
    Attempts younger than `min_age_s` are always kept, where the store reports ages.
    The `_tmp/` folder itself stays: removing it could race a concurrent attempt creating its own.
    """
    with contextlib.suppress(Exception):
        fs.invalidate_cache(layout.tmp_root)
    try:
        entries = fs.ls(layout.tmp_root, detail=True)
    except FileNotFoundError:
        return []
    if not entries:
        return []
    writer: str | None = None  # the run id of another live lease holder
    if lease is None or not lease.held:
        holder = read_lease(fs, layout)
        if holder is not None and holder.live:
            writer = holder.run_id or "?"
            if lease is not None and holder.record.get("nonce") == lease.nonce:
                writer = None
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    removed = []
    for info in entries:
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        keep_younger = min_age_s
        if writer is not None:
            owner = attempt_run_id(name)
            if owner == writer:
                continue
            if owner is None:
                keep_younger = max(keep_younger, FOREIGN_MIN_AGE_S)
        if keep_younger > 0:
            age = _attempt_age_s(fs, info, now)
            if age is not None and age < keep_younger:
                continue
            if age is None and writer is not None and keep_younger > min_age_s:
                continue  # no age, and a live writer that might own it: keep
        _remove_quietly(fs, info["name"], recursive=True)
        removed.append(info["name"])
    return removed


# --- formats of committed units -----------------------------------------------------------------


def _token_row_dicts(table: pa.Table) -> list[dict[str, Any]]:
    """Committed token rows back into the dicts the writers take (metadata JSON → dict)."""
    rows = table.to_pylist()
    for row in rows:
        row["metadata"] = json.loads(row.get("metadata") or "{}")
    return rows


def add_webdataset_twin(
    fs: fsspec.AbstractFileSystem,
    layout: OutputLayout,
    unit_id: str,
    entry: Mapping[str, Any],
    fingerprint: Mapping[str, Any],
) -> dict[str, Any]:
    """Give a committed unit its missing WebDataset tar; returns the (new) manifest entry.

    Reads the unit's committed tokens Parquet (checked against its manifest sha256), writes the tar
    with the same writer as `commit_unit` (so it is byte-identical to a tar written at commit
    time), publishes it, then republishes the manifest entry listing it with "webdataset" in
    `formats`. Safe to repeat and to interrupt: a unit that already has the twin is returned
    unchanged, and a crash before the manifest leaves an unlisted tar the next call overwrites.
    """
    check_safe_id(unit_id, "unit id")
    fp = dict(fingerprint)
    if dataset_version(fp) != layout.version:
        raise ValueError(
            f"fingerprint belongs to version {dataset_version(fp)!r}, layout is {layout.version!r}"
        )
    if entry.get(SLIM):
        raise ValueError(f"manifest entry of {unit_id!r} is a reader's slim copy: pass the whole entry")
    problem = entry_problem(entry, unit_id)
    if problem:
        raise ValueError(f"manifest entry of {unit_id!r} is damaged: {problem}")
    entry = dict(entry)
    if "webdataset" in entry_formats(entry):
        return entry
    listed = [f for f in entry["files"] if f["kind"] == "tokens"]
    if len(listed) != 1:
        raise ValueError(f"manifest entry of {unit_id!r} lists {len(listed)} tokens files, not 1")
    data = fs.cat_file(layout.path(listed[0]["path"]))
    if hashlib.sha256(data).hexdigest() != listed[0]["sha256"]:
        raise ValueError(f"{listed[0]['path']} does not match its manifest sha256")
    rows = _token_row_dicts(pq.read_table(io.BytesIO(data)))
    files = [f for f in entry["files"] if f["kind"] != "webdataset"]
    if rows:
        tar = shard_bytes(rows, fp)
        rel = layout.wds_rel(unit_id)
        publish(fs, layout.path(rel), tar)
        files.append(
            {
                "kind": "webdataset",
                "path": rel,
                "rows": len(rows),
                "bytes": len(tar),
                "sha256": hashlib.sha256(tar).hexdigest(),
            }
        )
    entry["files"] = files
    entry["formats"] = [f for f in FORMATS if f in {*entry_formats(entry), "webdataset"}]
    entry["formats_added_at"] = _now_iso()
    publish(fs, layout.manifest_path(unit_id), json_bytes(entry))
    return entry
