"""The manifest of a dataset version: one JSON entry per committed unit under `_manifest/`, the commit point.

Readers trust only the manifest: a unit's files count once its entry exists. This module reads the
entries (naming damaged ones instead of raising), and loads the token and error tables they list."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import posixpath
from collections.abc import Mapping, Sequence
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
from pipeline.dataset.parquet_writer import (
    ERRORS_SCHEMA,
    tokens_schema,
)
from pipeline.io.storage import redact_uri

log = logging.getLogger(__name__)


READ_THREADS = 16


@dataclass
class ManifestRead:
    """A version's manifest as read: good entries, and the damaged ones that count as uncommitted.

    `entries`: unit id → entry, sorted. `damaged`: manifest path relative to the version
    (`_manifest/<unit>.json`) → why it was refused (not JSON, truncated, wrong unit id, missing
    keys...). A damaged unit is not committed: a rerun redoes it and its commit overwrites the
    damaged entry."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    damaged: dict[str, str] = field(default_factory=dict)


def _is_safe_rel(path: Any) -> bool:
    return (
        isinstance(path, str)
        and bool(path)
        and not path.startswith("/")
        and ".." not in path.split("/")
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


def read_manifest_report(fs: fsspec.AbstractFileSystem, layout: OutputLayout) -> ManifestRead:
    """Every manifest entry of the version, sorted into good and damaged; never raises for a
    damaged entry (storage errors still propagate: wrap in `with_retries`)."""
    names = [
        n
        for n in list_files(fs, layout.manifest_dir)
        if n.endswith(".json") and not n.rsplit("/", 1)[-1].startswith(".")
    ]
    result = ManifestRead()
    if not names:
        return result

    def load(name: str) -> tuple[dict[str, Any] | None, str | None]:
        try:
            raw = fs.cat_file(name)
        except FileNotFoundError:
            return None, None  # removed since the listing: not committed, not damaged
        try:
            entry = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return None, f"not valid JSON (truncated or corrupt): {error}"
        problem = entry_problem(entry, posixpath.basename(name)[: -len(".json")])
        return (None, problem) if problem else (entry, None)

    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(names))) as pool:
        loaded = list(pool.map(load, names))
    for name, (entry, problem) in zip(names, loaded, strict=True):
        base = posixpath.basename(name)
        if problem is not None:
            result.damaged[f"{MANIFEST_DIR}/{base}"] = problem
        elif entry is not None:
            result.entries[base[: -len(".json")]] = entry
    result.entries = dict(sorted(result.entries.items()))
    result.damaged = dict(sorted(result.damaged.items()))
    return result


def read_manifest(fs: fsspec.AbstractFileSystem, layout: OutputLayout) -> dict[str, dict[str, Any]]:
    """All committed units: unit id → manifest entry (empty when nothing is committed yet).

    Damaged entries are left out (their units count as not committed, so a rerun redoes and
    recommits them) with a warning; `read_manifest_report` lists them."""
    found = read_manifest_report(fs, layout)
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


def list_files(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """Names in a folder, fresh (listing caches of object stores dropped), [] when absent."""
    with contextlib.suppress(Exception):
        fs.invalidate_cache(folder)
    try:
        entries = fs.ls(folder, detail=True)
    except FileNotFoundError:
        return []
    return [e["name"] for e in entries if e.get("type") != "directory"]
