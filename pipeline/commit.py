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
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.output_layout import (
    OutputLayout,
    check_safe_id,
    dataset_version,
    fingerprint_digest,
    is_local,
    new_attempt_id,
    publish,
)
from pipeline.parquet_writer import (
    ERRORS_SCHEMA,
    errors_table,
    parquet_bytes,
    tokens_schema,
    tokens_table,
)
from pipeline.webdataset_writer import shard_bytes

__all__ = [
    "FORMATS",
    "UnitCommit",
    "cleanup_tmp",
    "commit_unit",
    "committed_source_uris",
    "committed_unit_ids",
    "load_errors",
    "load_tokens",
    "publish",
    "read_manifest",
    "read_run_records",
    "write_run_record",
]

FORMATS = ("parquet", "webdataset")
READ_THREADS = 16


@dataclass(frozen=True)
class UnitCommit:
    """What a commit published: the manifest entry and where it lies."""

    unit_id: str
    manifest_path: str
    entry: dict[str, Any] = field(repr=False)

    @property
    def files(self) -> list[dict[str, Any]]:
        return self.entry["files"]


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


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
        outputs.append(
            ("errors", layout.errors_rel(unit_id), errors.num_rows, parquet_bytes(errors))
        )
    if "webdataset" in formats and token_rows:
        outputs.append(
            ("webdataset", layout.wds_rel(unit_id), len(token_rows), shard_bytes(token_rows, fp))
        )

    attempt_id = new_attempt_id()
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
            "unit_info": dict(unit_info or {}),
            "files": files,
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
        publish(fs, manifest_path, _json_bytes(entry), tmp_dir=tmp_dir)
    finally:
        if tmp_dir is not None:
            _remove_quietly(fs, tmp_dir, recursive=True)

    written = {f["path"] for f in files}
    stale = [layout.errors_rel(unit_id), layout.wds_rel(unit_id)]
    for rel in stale:
        if rel not in written:
            _remove_quietly(fs, layout.path(rel))
    return UnitCommit(unit_id=unit_id, manifest_path=manifest_path, entry=entry)


def _list_files(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """Names in a folder, fresh (listing caches of object stores dropped), [] when absent."""
    with contextlib.suppress(Exception):
        fs.invalidate_cache(folder)
    try:
        entries = fs.ls(folder, detail=True)
    except FileNotFoundError:
        return []
    return [e["name"] for e in entries if e.get("type") != "directory"]


def read_manifest(fs: fsspec.AbstractFileSystem, layout: OutputLayout) -> dict[str, dict[str, Any]]:
    """All committed units: unit id → manifest entry (empty when nothing is committed yet)."""
    names = [
        n
        for n in _list_files(fs, layout.manifest_dir)
        if n.endswith(".json") and not n.rsplit("/", 1)[-1].startswith(".")
    ]
    if not names:
        return {}

    def load(name: str) -> dict[str, Any]:
        raw = fs.cat_file(name)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as error:
            raise ValueError(f"corrupt manifest entry {name}: {error}") from error

    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(names))) as pool:
        entries = list(pool.map(load, names))
    result: dict[str, dict[str, Any]] = {}
    for name, entry in zip(names, entries, strict=True):
        expected = name.rsplit("/", 1)[-1][: -len(".json")]
        if entry.get("unit_id") != expected:
            raise ValueError(f"manifest entry {name} names unit {entry.get('unit_id')!r}")
        result[expected] = entry
    return dict(sorted(result.items()))


def committed_unit_ids(fs: fsspec.AbstractFileSystem, layout: OutputLayout) -> set[str]:
    """Units a planner must skip."""
    return set(read_manifest(fs, layout))


def committed_source_uris(
    fs: fsspec.AbstractFileSystem,
    layout: OutputLayout,
    manifest: Mapping[str, dict[str, Any]] | None = None,
) -> set[str]:
    """Source URIs already covered by committed "files" units, for incremental planning.

    Pass `manifest` when it was just read: on object stores each read is one GET per unit."""
    uris: set[str] = set()
    entries = read_manifest(fs, layout) if manifest is None else manifest
    for entry in entries.values():
        info = entry.get("unit_info") or {}
        if info.get("kind") != "files":
            continue
        uris.update(str(u) for u in info.get("uris") or ())
        if info.get("uri"):
            uris.add(str(info["uri"]))
    return uris


def _read_listed(
    fs: fsspec.AbstractFileSystem,
    layout: OutputLayout,
    kind: str,
    schema: pa.Schema,
    columns: Sequence[str] | None,
    verify: bool,
) -> pa.Table:
    manifest = read_manifest(fs, layout)
    listed = [f for e in manifest.values() for f in e["files"] if f["kind"] == kind]

    def load(item: dict[str, Any]) -> pa.Table:
        data = fs.cat_file(layout.path(item["path"]))
        if verify and hashlib.sha256(data).hexdigest() != item["sha256"]:
            raise ValueError(f"{item['path']} does not match its manifest sha256")
        return pq.read_table(io.BytesIO(data), columns=list(columns) if columns else None)

    if not listed:
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns else empty
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(listed))) as pool:
        tables = list(pool.map(load, listed))
    return pa.concat_tables(tables)


def load_tokens(
    fs: fsspec.AbstractFileSystem,
    layout: OutputLayout,
    *,
    columns: Sequence[str] | None = None,
    verify: bool = False,
) -> pa.Table:
    """Token rows of committed units only (ordered by unit, then id); `verify` checks sha256."""
    return _read_listed(fs, layout, "tokens", tokens_schema(), columns, verify)


def load_errors(
    fs: fsspec.AbstractFileSystem,
    layout: OutputLayout,
    *,
    columns: Sequence[str] | None = None,
    verify: bool = False,
) -> pa.Table:
    """Error rows of committed units only."""
    return _read_listed(fs, layout, "errors", ERRORS_SCHEMA, columns, verify)


def _age_s(info: Mapping[str, Any], now: float) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "created", "updated"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return now - float(value)
        if isinstance(value, dt.datetime):
            return now - value.timestamp()
    return None


def _attempt_age_s(
    fs: fsspec.AbstractFileSystem, info: Mapping[str, Any], now: float
) -> float | None:
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
    fs: fsspec.AbstractFileSystem, layout: OutputLayout, *, min_age_s: float = 0.0
) -> list[str]:
    """Remove leftovers of interrupted attempts (`_tmp/<attempt>/`); returns what was removed.

    Attempts younger than `min_age_s` are kept, so a cleanup beside a running job leaves that
    job's in-flight temporaries alone (where the store reports ages; otherwise all go). The
    `_tmp/` folder itself stays: removing it could race a concurrent attempt creating its own.
    """
    with contextlib.suppress(Exception):
        fs.invalidate_cache(layout.tmp_root)
    try:
        entries = fs.ls(layout.tmp_root, detail=True)
    except FileNotFoundError:
        return []
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    removed = []
    for info in entries:
        if min_age_s > 0:
            age = _attempt_age_s(fs, info, now)
            if age is not None and age < min_age_s:
                continue
        _remove_quietly(fs, info["name"], recursive=True)
        removed.append(info["name"])
    return removed


def write_run_record(
    fs: fsspec.AbstractFileSystem, layout: OutputLayout, run_id: str, record: Mapping[str, Any]
) -> str:
    """Publish `runs/<run_id>.json`; returns its path."""
    path = layout.run_path(run_id)
    publish(fs, path, _json_bytes(dict(record)))
    return path


def read_run_records(fs: fsspec.AbstractFileSystem, layout: OutputLayout) -> dict[str, Any]:
    """run id → run record, for status and metrics."""
    records = {}
    for name in _list_files(fs, layout.runs_dir):
        base = name.rsplit("/", 1)[-1]
        if base.endswith(".json") and not base.startswith("."):
            records[base[: -len(".json")]] = json.loads(fs.cat_file(name))
    return dict(sorted(records.items()))


def latest_tokenize_record(fs: fsspec.AbstractFileSystem, layout: OutputLayout) -> dict[str, Any]:
    """The newest tokenize run record of a version: how its tokens were made (config, fingerprint)."""
    records = read_run_records(fs, layout)
    for _, record in sorted(records.items(), reverse=True):
        if record.get("kind", "tokenize") == "tokenize" and record.get("config"):
            return record
    raise ValueError(f"{layout.version_url} has no tokenize run record: cannot tell how it was made")
