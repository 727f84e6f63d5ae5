"""The manifest of a dataset version: one JSON entry per committed unit under `_manifest/`, the commit point.

Readers trust only the manifest: a unit's files count once its entry exists. This module reads the
entries (naming damaged ones instead of raising), and loads the token and error tables they list.

Consolidated manifest (`pipeline.dataset.manifest_index`, written by `pipeline.dataset.compaction`):
entries may also be held by an index file `_manifest/_index/<seq>.parquet`, a copy of many entries
made by compaction, after which the entry files it copied are deleted. A read lists `_manifest/`
once (and `_index/`), GETs the newest index that reads back whole, and GETs only the entry files
the index does not already hold. Precedence, per unit:
- an entry file present in the listing is the truth. The index says from which file each row was
  copied (its listing stamp: size + ETag, or size + mtime + inode locally); a file with that very
  stamp is not read again (the row is that file), any other file is read and wins over the row.
  Timestamps are not compared: an entry file is only ever replaced by a newer commit of its unit
  (recommit after a changed input, retry-failed, an added WebDataset twin), so a present file is
  never older than an index copy of it, whatever `committed_at` or the attempt id say;
- a present entry file that is damaged makes its unit not committed, even if an index row exists
  (the recommit that replaced the copied file also replaced the unit's data files);
- a unit with an index row and no entry file is committed as the row says;
- a damaged index (unreadable, bad checksum, wrong rows) is reported in `damaged_index` and the
  next older index is used instead; compaction keeps the previous index and the entry files of
  the last fold until the next one, so that fallback loses nothing (see `compaction`).
Outputs written before the index existed hold entry files only and read as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import posixpath
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset.layout import (
    MANIFEST_DIR,
    OutputLayout,
)
from pipeline.dataset.manifest_index import (
    INDEX_DIR,
    IndexDamaged,
    IndexRow,
    decode_index,
    entry_stamp,
    index_rel,
    index_seq,
)
from pipeline.dataset.parquet_writer import (
    ERRORS_SCHEMA,
    tokens_schema,
)
from pipeline.io.storage import redact_uri

log = logging.getLogger(__name__)


READ_THREADS = 16
# Marks an entry a reader holds without its files unit's URIs and stamps (a planner's compact copy,
# pipeline/tokenize/work_plan.py): such an entry is never written back.
SLIM = "_slim"
READ_CHUNK = 64  # at most this many entry files per pool task


@dataclass
class ManifestRead:
    """A version's manifest as read: good entries, and the damaged ones that count as uncommitted.

    `entries`: unit id → entry, sorted. `damaged`: manifest path relative to the version
    (`_manifest/<unit>.json`) → why it was refused (not JSON, truncated, wrong unit id, missing
    keys...). A damaged unit is not committed: a rerun redoes it and its commit overwrites the
    damaged entry. `damaged_index`: index files (`_manifest/_index/<seq>.parquet`) that could not be
    trusted → why; readers used an older index (`index`, None for none) and the entry files.

    For compaction and reports: `loose` (unit id → listing stamp of every entry file present),
    `stamps` (unit id → stamp of the entry file its entry is a copy of), `covered` (units whose
    entry file is the one the index row was copied from, so it was not read), `index_seqs` (every
    index file present, damaged ones included)."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    damaged: dict[str, str] = field(default_factory=dict)
    damaged_index: dict[str, str] = field(default_factory=dict)
    index: str | None = None
    index_units: int = 0
    loose: dict[str, str] = field(default_factory=dict, repr=False)
    stamps: dict[str, str] = field(default_factory=dict, repr=False)
    covered: set[str] = field(default_factory=set, repr=False)
    index_seqs: list[int] = field(default_factory=list)

    @property
    def index_seq(self) -> int | None:
        """Seq of the index read, None when none was."""
        return index_seq(self.index) if self.index else None


def _is_safe_rel(path: Any) -> bool:
    return (
        isinstance(path, str)
        and bool(path)
        and not path.startswith("/")
        and "/../" not in f"/{path}/"
        and "://" not in path
    )


def entry_problem(entry: Any, unit_id: str) -> str | None:
    """Why a manifest entry cannot be trusted, or None when its shape is sound: an object naming
    `unit_id`, with a non-empty `files` list of {path (relative, inside the version), kind,
    sha256} records."""
    if not isinstance(entry, dict):
        return f"not a JSON object but {type(entry).__name__}"
    if entry.get("unit_id") != unit_id:
        return f"names unit {entry.get('unit_id')!r}, not {unit_id!r}"
    files = entry.get("files")
    if not isinstance(files, list) or not files:
        return "no 'files' list"
    for i, record in enumerate(files):
        if not isinstance(record, dict):
            return f"files[{i}] is not an object"
        for key in ("path", "kind", "sha256"):
            if not isinstance(record.get(key), str) or not record.get(key):
                return f"files[{i}] lacks a '{key}' string"
        if not _is_safe_rel(record["path"]):
            return f"files[{i}] path {record['path']!r} is not inside the version"
    if entry.get("unit_info") is not None and not isinstance(entry.get("unit_info"), dict):
        return "'unit_info' is not an object"
    return None


def list_manifest(
    fs: fsspec.AbstractFileSystem, layout: OutputLayout
) -> tuple[dict[str, tuple[str, str]], dict[int, str]]:
    """One listing of `_manifest/` (and of `_index/` when present): (unit id → (path, stamp) of each
    entry file, seq → path of each index file). Hidden names are temporaries: skipped."""
    loose: dict[str, tuple[str, str]] = {}
    has_index = False
    for info in list_entries(fs, layout.manifest_dir):
        base = posixpath.basename(info["name"].rstrip("/"))
        if info.get("type") == "directory":
            has_index = has_index or base == INDEX_DIR.rsplit("/", 1)[-1]
        elif base.endswith(".json") and not base.startswith("."):
            loose[base[: -len(".json")]] = (info["name"], entry_stamp(info))
    indexes: dict[int, str] = {}
    if has_index:
        for info in list_entries(fs, layout.path(INDEX_DIR)):
            seq = index_seq(info["name"])
            if info.get("type") != "directory" and seq is not None:
                indexes[seq] = info["name"]
    return loose, indexes


def _load_entry(fs: fsspec.AbstractFileSystem, path: str) -> tuple[dict[str, Any] | None, str | None]:
    """(entry, None), (None, why it is damaged), or (None, None) when it vanished since the listing."""
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None, None
    try:
        entry = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, f"not valid JSON (truncated or corrupt): {error}"
    problem = entry_problem(entry, posixpath.basename(path)[: -len(".json")])
    return (None, problem) if problem else (entry, None)


def _newest_index(
    fs: fsspec.AbstractFileSystem,
    indexes: Mapping[int, str],
    result: ManifestRead,
    shape: Callable[[str, dict[str, Any]], dict[str, Any] | None] | None = None,
) -> dict[str, IndexRow]:
    """Rows of the newest index that reads back whole; damaged ones go to `result.damaged_index`."""
    for seq in sorted(indexes, reverse=True):
        try:
            data = fs.cat_file(indexes[seq])
        except FileNotFoundError:
            continue  # removed since the listing (superseded by a newer compaction)
        try:
            rows = decode_index(data, seq=seq, check_entry=entry_problem, shape=shape)
        except IndexDamaged as error:
            result.damaged_index[index_rel(seq)] = str(error)
            continue
        result.index, result.index_units = index_rel(seq), len(rows)
        return rows
    return {}


def read_manifest_report(
    fs: fsspec.AbstractFileSystem,
    layout: OutputLayout,
    *,
    shape: Callable[[str, dict[str, Any]], dict[str, Any] | None] | None = None,
) -> ManifestRead:
    """Every committed unit of the version, from the newest good index plus the entry files (see
    the module doc for precedence), and the damaged entries and index files; never raises for
    damage (storage errors still propagate: wrap in `with_retries`).

    `shape(unit_id, entry)` is what `entries` holds of each good entry as it is read (None: leave
    the unit out), so a reader of 10⁵ entries need not hold them whole. `shape` may see entries
    that do not make it into `entries`: an index row replaced by its unit's newer entry file
    (shaped in turn) or dropped because that file is damaged, rows of an index found damaged
    partway; a `shape` with side effects must check the result (`PlanStream` does)."""
    loose, indexes = list_manifest(fs, layout)
    result = ManifestRead(index_seqs=sorted(indexes))
    rows = _newest_index(fs, indexes, result, shape)
    result.loose = {unit: stamp for unit, (_, stamp) in loose.items()}
    to_read = []
    for unit, (path, stamp) in loose.items():
        row = rows.get(unit)
        if row is not None and stamp and row.stamp == stamp:
            result.covered.add(unit)
        else:
            to_read.append((unit, path, stamp))
    entries = {unit: row.entry for unit, row in rows.items() if row.entry is not None}
    stamps = {unit: row.stamp for unit, row in rows.items() if row.entry is not None}
    if to_read:
        # Chunks, not one task per entry: 10^5 tiny tasks cost more in the pool than the reads.
        size = max(1, min(READ_CHUNK, -(-len(to_read) // READ_THREADS)))
        chunks = [to_read[i : i + size] for i in range(0, len(to_read), size)]
        with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(chunks))) as pool:
            parts = pool.map(lambda chunk: [_load_entry(fs, job[1]) for job in chunk], chunks)
            loaded = [one for part in parts for one in part]
        for (unit, path, stamp), (entry, problem) in zip(to_read, loaded, strict=True):
            if problem is not None:
                result.damaged[f"{MANIFEST_DIR}/{posixpath.basename(path)}"] = problem
                entries.pop(unit, None)  # the unit's current commit is damaged: not committed
                stamps.pop(unit, None)
            elif entry is not None:
                kept = shape(unit, entry) if shape is not None else entry
                if kept is None:
                    entries.pop(unit, None)
                    stamps.pop(unit, None)
                else:
                    entries[unit], stamps[unit] = kept, stamp
    result.entries = dict(sorted(entries.items()))
    result.stamps = stamps
    result.damaged = dict(sorted(result.damaged.items()))
    return result


def read_manifest(fs: fsspec.AbstractFileSystem, layout: OutputLayout) -> dict[str, dict[str, Any]]:
    """All committed units: unit id → manifest entry (empty when nothing is committed yet).

    Damaged entries are left out (their units count as not committed, so a rerun redoes and
    recommits them) with a warning; `read_manifest_report` lists them."""
    found = read_manifest_report(fs, layout)
    for path, why in found.damaged_index.items():
        log.warning(
            "damaged manifest index %s under %s (%s): read %s and the entry files instead",
            path,
            redact_uri(layout.version_url),
            why,
            found.index or "no index",
        )
    if found.damaged:
        shown = "; ".join(f"{path}: {why}" for path, why in list(found.damaged.items())[:5])
        log.warning(
            "%d damaged manifest entr%s under %s treated as not committed (a rerun redoes them): %s",
            len(found.damaged),
            "y" if len(found.damaged) == 1 else "ies",
            redact_uri(layout.version_url),
            shown,
        )
    return found.entries


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


def entry_formats(entry: Mapping[str, Any]) -> list[str]:
    """The output formats a committed unit has: its `formats` list, or (entries written before it
    was recorded) parquet plus webdataset when a tar is listed."""
    recorded = entry.get("formats")
    if isinstance(recorded, list):
        return [f for f in FORMATS if f in recorded]
    kinds = {f.get("kind") for f in entry.get("files") or () if isinstance(f, Mapping)}
    return ["parquet"] + (["webdataset"] if "webdataset" in kinds else [])


def units_lacking(manifest: Mapping[str, Mapping[str, Any]], fmt: str) -> list[str]:
    """Committed unit ids whose entry lacks format `fmt` (e.g. the WebDataset twin)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}, expected one of {FORMATS}")
    return sorted(u for u, e in manifest.items() if fmt not in entry_formats(e))


FORMATS = ("parquet", "webdataset")


def json_bytes(value: Any) -> bytes:
    return (json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def list_entries(fs: fsspec.AbstractFileSystem, folder: str) -> list[dict[str, Any]]:
    """`ls(detail=True)` of a folder, fresh (listing caches of object stores dropped), [] when absent."""
    with contextlib.suppress(Exception):
        fs.invalidate_cache(folder)
    try:
        return fs.ls(folder, detail=True)
    except FileNotFoundError:
        return []


def list_files(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """Names in a folder, fresh (listing caches of object stores dropped), [] when absent."""
    return [e["name"] for e in list_entries(fs, folder) if e.get("type") != "directory"]
