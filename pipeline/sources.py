"""Plan input units and read source items from them, for four input kinds.

Kinds:
  * ``files``    audio files under a prefix / glob (or one file), chunked into units.
  * ``tar``      WebDataset tar shards, one unit per shard, streamed.
  * ``parquet``  HF-datasets-style parquet (audio struct {bytes, path}), one unit per row group.
  * ``manifest`` a .jsonl / .csv file listing audio URIs, chunked into row ranges.

Per-item problems never raise: they become ``SourceItem`` rows with ``error`` set, so every
input item is accounted for exactly once downstream.

Item ids are safe relative paths (no absolute paths, no ``..`` components, no control chars):
the output layer may use them as object names. Tar member-name policy: members with unsafe names
(absolute, ``..`` components, NUL/control characters) and non-regular members (symlinks, hard
links, devices, fifos) are NEVER read; each becomes an error row with reason
``unsafe_member_name`` whose item id is ``<shard>/#unsafe-<hash>/<sanitized name>``.

Parquet metadata policy: non-audio columns go to ``metadata`` converted to JSON-able values;
binary values are dropped (they are usually other blobs and would bloat every token row),
non-finite floats become None, dates/decimals become strings.
"""

from __future__ import annotations

import csv
import datetime as _dt
import decimal
import gzip
import hashlib
import io
import json
import logging
import lzma
import math
import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
from fsspec.core import split_protocol

from pipeline.records import InputUnit, ItemError, SourceItem
from pipeline.storage import (
    full_uri,
    is_transient,
    open_filesystem,
    protocol_of,
    with_retries,
)

log = logging.getLogger(__name__)

AUDIO_EXTS = frozenset({"wav", "flac", "mp3", "ogg", "oga", "opus", "m4a", "aac", "webm", "mp4"})
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MANIFEST_SUFFIXES = (".jsonl", ".csv")
URI_COLUMNS = ("audio", "uri", "path", "audio_filepath", "audio_path", "file")
ID_COLUMNS = ("id", "key", "__key__")
KINDS = ("files", "tar", "parquet", "manifest")
_GLOB_CHARS = re.compile(r"[*?\[]")
_UNIT_ID_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TAR_BLOCK = 8 * 1024 * 1024


# --- naming helpers -------------------------------------------------------------------------


def _hash(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def safe_relpath(name: str) -> str:
    """A relative path that can never escape a directory: drops '/', '.', '..' components.

    Backslashes count as separators and control characters (NUL included) become '_'.
    Unicode and spaces are kept so ids stay readable.
    """
    name = _CONTROL.sub("_", name.replace("\\", "/"))
    parts = [p for p in name.split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


def is_unsafe_name(name: str) -> bool:
    """True for archive member names that must not be trusted as paths."""
    if not name or _CONTROL.search(name):
        return True
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return True
    return any(p == ".." for p in norm.split("/"))


def _unit_slug(text: str, limit: int) -> str:
    slug = _UNIT_ID_BAD.sub("_", text).strip("._-") or "x"
    return slug[:limit]


def _strip_suffixes(name: str, suffixes: tuple[str, ...]) -> str:
    low = name.lower()
    for s in sorted(suffixes, key=len, reverse=True):
        if low.endswith(s):
            return name[: -len(s)]
    return name


def _ext(name: str) -> str:
    base = posixpath.basename(name)
    return base.rsplit(".", 1)[1].lower() if "." in base else ""


def _is_audio_name(name: str) -> bool:
    return _ext(name) in AUDIO_EXTS


def _is_tar_name(name: str) -> bool:
    return name.lower().endswith(TAR_SUFFIXES)


def _path_of(uri: str) -> str:
    return split_protocol(uri)[1]


def _relative(uri: str, root: str) -> str:
    """Path of uri relative to root (both URIs); falls back to the basename."""
    path, base = _path_of(uri), _path_of(root).rstrip("/")
    if base and path.startswith(base + "/"):
        return path[len(base) + 1 :]
    if not base and not path.startswith("/"):
        return path
    return posixpath.basename(path)


# --- JSON-able metadata ---------------------------------------------------------------------

_DROP = object()


def to_jsonable(value: Any) -> Any:
    """Make a value JSON-able; binary values become the _DROP sentinel (see module doc)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _DROP
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            j = to_jsonable(v)
            if j is not _DROP:
                out[str(k)] = j
        return out
    if isinstance(value, (list, tuple)):
        return [None if (j := to_jsonable(v)) is _DROP else j for v in value]
    if isinstance(value, (_dt.date, _dt.datetime, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return to_jsonable(value.item())
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    return str(value)


def _jsonable_dict(d: Mapping[str, Any]) -> dict[str, Any]:
    j = to_jsonable(d)
    return j if isinstance(j, dict) else {}


# --- planning -------------------------------------------------------------------------------


def _list_files(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """All regular objects under path, sorted; directory markers excluded."""
    found = with_retries(lambda: fs.find(path, withdirs=False, detail=True))
    out = [p for p, info in found.items() if info.get("type", "file") != "directory" and not p.endswith("/")]
    return sorted(out)


def _glob_root(pattern_path: str) -> str:
    parts = pattern_path.split("/")
    keep: list[str] = []
    for p in parts:
        if _GLOB_CHARS.search(p):
            break
        keep.append(p)
    return "/".join(keep)


def plan_units(
    input_url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    kind: str = "auto",
    files_per_unit: int = 256,
    exclude_uris: frozenset[str] = frozenset(),
    glob: str | None = None,
) -> list[InputUnit]:
    """List the input and cut it into deterministic units (sorted listing -> stable ids).

    ``exclude_uris`` removes already-committed inputs (file URIs, shard URIs, parquet URIs) so an
    incremental run only plans new work. Both full URIs (file:///...) and bare paths match.
    """
    if kind not in ("auto", *KINDS):
        raise ValueError(f"unknown kind {kind!r}; expected auto or one of {KINDS}")
    if files_per_unit < 1:
        raise ValueError("files_per_unit must be >= 1")
    fs, path = open_filesystem(input_url, storage_options)
    path = path.rstrip("/") or path
    excluded = set(exclude_uris)

    def is_excluded(p: str) -> bool:
        return p in excluded or full_uri(fs, p) in excluded

    if glob is not None or _GLOB_CHARS.search(path):
        pattern = posixpath.join(path, glob) if glob is not None else path
        root_path = _glob_root(pattern).rstrip("/")
        matched = with_retries(lambda: fs.glob(pattern, detail=True))
        paths = sorted(p for p, info in matched.items() if info.get("type") == "file" and not p.endswith("/"))
        is_single = False
    elif with_retries(lambda: fs.isfile(path)):
        root_path = posixpath.dirname(path)
        paths = [path]
        is_single = True
    else:
        root_path = path
        paths = _list_files(fs, path)
        is_single = False
    root = full_uri(fs, root_path) if root_path else full_uri(fs, "")

    if kind == "auto":
        kind = _detect_kind(paths, is_single)
        log.info("input %s: detected kind %r", input_url, kind)

    if kind == "manifest":
        if len(paths) != 1:
            raise ValueError("manifest input must be a single .jsonl/.csv file URL")
        return _plan_manifest(fs, paths[0], files_per_unit, storage_options)
    if kind == "tar":
        shards = [p for p in paths if _is_tar_name(p) and not is_excluded(p)]
        return [_tar_unit(fs, p, root) for p in shards]
    if kind == "parquet":
        files = [p for p in paths if p.lower().endswith(".parquet") and not is_excluded(p)]
        units: list[InputUnit] = []
        for p in files:
            units.extend(_plan_parquet_file(fs, p, root))
        return units
    audio = [p for p in paths if _is_audio_name(p) and not is_excluded(p)]
    uris = [full_uri(fs, p) for p in audio]
    units = []
    for i in range(0, len(uris), files_per_unit):
        chunk = tuple(uris[i : i + files_per_unit])
        unit_id = "files-" + _hash("\n".join(chunk))
        units.append(InputUnit(unit_id=unit_id, kind="files", uris=chunk, root=root))
    return units


def _detect_kind(paths: list[str], is_single: bool) -> str:
    lows = [p.lower() for p in paths]
    if is_single and lows and lows[0].endswith(MANIFEST_SUFFIXES):
        return "manifest"
    if any(p.endswith(".parquet") for p in lows):
        return "parquet"
    if any(p.endswith(TAR_SUFFIXES) for p in lows):
        return "tar"
    return "files"


def _tar_unit(fs: fsspec.AbstractFileSystem, path: str, root: str) -> InputUnit:
    uri = full_uri(fs, path)
    rel = _relative(uri, root)
    stem = _strip_suffixes(rel, TAR_SUFFIXES)
    unit_id = f"tar-{_unit_slug(stem, 90)}-{_hash(rel, 12)}"
    return InputUnit(unit_id=unit_id, kind="tar", uris=(uri,), root=root)


def _plan_parquet_file(fs: fsspec.AbstractFileSystem, path: str, root: str) -> list[InputUnit]:
    import pyarrow.parquet as pq

    uri = full_uri(fs, path)
    rel = _relative(uri, root)
    slug = _unit_slug(_strip_suffixes(rel, (".parquet",)), 80)

    def footer() -> int:
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_row_groups

    try:
        n = with_retries(footer)
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt footer is per-file data, not fatal
        _raise_if_transient(exc)
        log.warning("parquet footer unreadable for %s: %s", uri, type(exc).__name__)
        return [InputUnit(unit_id=f"pq-{slug}-bad-{_hash(rel, 12)}", kind="parquet", uris=(uri,), root=root)]
    return [
        InputUnit(
            unit_id=f"pq-{slug}-rg{rg}-{_hash(rel, 12)}",
            kind="parquet",
            uris=(uri,),
            row_group=rg,
            root=root,
        )
        for rg in range(n)
    ]


# --- manifest parsing -----------------------------------------------------------------------

_manifest_cache: dict[str, Any] = {}


def _manifest_rows(fs: fsspec.AbstractFileSystem, path: str) -> list[tuple[str, dict[str, Any] | None, str]]:
    """Rows of a manifest as (raw text, parsed dict or None when unparsable, parse error).

    A one-entry cache keyed by (path, size, mtime/etag) spares re-parsing when one worker reads
    several units of the same manifest.
    """
    info = with_retries(lambda: fs.info(path))
    stamp = (path, info.get("size"), str(info.get("mtime") or info.get("ETag") or ""))
    if _manifest_cache.get("stamp") == stamp:
        return _manifest_cache["rows"]
    raw = with_retries(lambda: fs.cat_file(path))
    text = raw.decode("utf-8-sig", errors="replace")
    rows: list[tuple[str, dict[str, Any] | None, str]] = []
    if path.lower().endswith(".csv"):
        reader = csv.reader(io.StringIO(text, newline=""))
        header: list[str] | None = None
        for rec in reader:
            if header is None:
                header = [h.strip() for h in rec]
                continue
            if not any(c.strip() for c in rec):
                continue
            line = ",".join(rec)
            if len(rec) != len(header):
                rows.append((line, None, f"{len(rec)} fields, header has {len(header)}"))
                continue
            rows.append((line, {h: v for h, v in zip(header, rec, strict=True) if h}, ""))
    else:
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append((line, None, f"invalid JSON: {exc.msg}"))
                continue
            if not isinstance(obj, dict):
                rows.append((line, None, "row is not a JSON object"))
                continue
            rows.append((line, obj, ""))
    _manifest_cache.clear()
    _manifest_cache.update(stamp=stamp, rows=rows)
    return rows


def _id_column(row: Mapping[str, Any]) -> str | None:
    for c in ID_COLUMNS:
        if c in row:
            return c
    return None


def _plan_manifest(
    fs: fsspec.AbstractFileSystem,
    path: str,
    rows_per_unit: int,
    storage_options: Mapping[str, Any] | None,
) -> list[InputUnit]:
    uri = full_uri(fs, path)
    rows = _manifest_rows(fs, path)
    ids = [
        str(r[c])
        for _, r, _ in rows
        if r is not None and (c := _id_column(r)) is not None and r[c] not in (None, "")
    ]
    dupes = {i for i in ids if ids.count(i) > 1} if len(set(ids)) != len(ids) else set()
    if dupes:
        raise ValueError(f"manifest {uri}: id column has duplicate values, e.g. {sorted(dupes)[:3]}")
    root = full_uri(fs, posixpath.dirname(path))
    stem = _strip_suffixes(posixpath.basename(path), MANIFEST_SUFFIXES)
    units = []
    for start in range(0, len(rows), rows_per_unit):
        stop = min(start + rows_per_unit, len(rows))
        # Content hash: an edited row range gets a new id, so it is not mistaken as committed.
        digest = _hash(stem + "\n" + "\n".join(r[0] for r in rows[start:stop]), 12)
        units.append(
            InputUnit(
                unit_id=f"manifest-{_unit_slug(stem, 60)}-{start}-{stop}-{digest}",
                kind="manifest",
                uris=(uri,),
                row_range=(start, stop),
                root=root,
            )
        )
    return units


# --- reading --------------------------------------------------------------------------------


def read_unit(
    unit: InputUnit,
    *,
    storage_options: Mapping[str, Any] | None = None,
    audio_column: str | None = None,
    uri_column: str | None = None,
) -> Iterator[SourceItem]:
    """Yield one SourceItem per input item of the unit; per-item failures are error rows."""
    if unit.kind == "files":
        yield from _read_files(unit, storage_options)
    elif unit.kind == "tar":
        yield from _read_tar(unit, storage_options)
    elif unit.kind == "parquet":
        yield from _read_parquet(unit, storage_options, audio_column)
    elif unit.kind == "manifest":
        yield from _read_manifest(unit, storage_options, uri_column)
    else:
        raise ValueError(f"unknown unit kind {unit.kind!r}")


def _err(item_id: str, uri: str, reason: str, detail: str, meta: dict | None = None) -> SourceItem:
    return SourceItem(
        item_id=item_id,
        source_uri=uri,
        data=None,
        metadata=meta or {},
        error=ItemError(stage="read", reason=reason, detail=detail[:500]),
    )


def _raise_if_transient(exc: BaseException) -> None:
    """Storage trouble that outlasted its retries fails the unit instead of becoming error rows.

    An outage is not a property of the item: recording it would leave good items in the errors
    table. Failing the unit fails the job with the storage error, and a rerun resumes it.
    """
    if is_transient(exc):
        raise exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _read_object(uri: str, storage_options: Mapping[str, Any] | None) -> bytes:
    fs, path = open_filesystem(uri, storage_options)
    return with_retries(lambda: fs.cat_file(path))


def _read_files(unit: InputUnit, storage_options: Mapping[str, Any] | None) -> Iterator[SourceItem]:
    for uri in unit.uris:
        item_id = safe_relpath(_relative(uri, unit.root))
        try:
            data = _read_object(uri, storage_options)
        except Exception as exc:  # noqa: BLE001 - per-item failure becomes an error row
            _raise_if_transient(exc)
            yield _err(item_id, uri, "unreadable_object", _describe(exc))
            continue
        yield SourceItem(item_id=item_id, source_uri=uri, data=bytes(data), metadata={})


# --- tar ------------------------------------------------------------------------------------

_TEXT_LIMIT = 1 << 20


class _TransientMidStream(Exception):
    """A retryable storage error in the middle of a tar stream."""


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename; ext = the rest."""
    name = name[2:] if name.startswith("./") else name
    d, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    return (posixpath.join(d, stem) if d else stem), ext.lower() if dot else ""


def _read_tar(unit: InputUnit, storage_options: Mapping[str, Any] | None) -> Iterator[SourceItem]:
    """Stream a shard; on a transient error mid-stream, reopen and skip items already yielded."""
    emitted = 0
    attempts = 4
    for attempt in range(attempts):
        produced = 0
        try:
            for item in _tar_items(unit, storage_options):
                produced += 1
                if produced <= emitted:
                    continue
                emitted += 1
                yield item
            return
        except _TransientMidStream as exc:
            if attempt == attempts - 1:  # an outage, not a broken shard: fail the unit (see above)
                raise OSError(f"storage kept failing while reading {unit.uris[0]}: {exc}") from exc
            log.warning("transient error mid-shard %s, reopening", unit.unit_id)


def _shard_key(unit: InputUnit) -> str:
    return safe_relpath(_strip_suffixes(_relative(unit.uris[0], unit.root), TAR_SUFFIXES))


def _tar_items(unit: InputUnit, storage_options: Mapping[str, Any] | None) -> Iterator[SourceItem]:
    uri = unit.uris[0]
    shard = _shard_key(unit)
    try:
        fs, path = open_filesystem(uri, storage_options)
        fobj = with_retries(lambda: fs.open(path, "rb", block_size=_TAR_BLOCK))
    except Exception as exc:  # noqa: BLE001
        _raise_if_transient(exc)
        yield _err(f"{shard}/#unreadable", uri, "unreadable_object", _describe(exc))
        return
    seen: set[str] = set()
    dup_count: dict[str, int] = {}
    group_key: str | None = None
    group: list[tuple[str, str, bytes]] = []  # (ext, member name, data)

    def flush() -> Iterator[SourceItem]:
        if group_key is None:
            return
        yield from _tar_group(uri, shard, group_key, group, seen, dup_count)

    try:
        with fobj:
            tf = tarfile.open(fileobj=fobj, mode="r|*")
            for member in tf:
                name = member.name
                if member.isdir():
                    continue
                if is_unsafe_name(name) or not member.isfile():
                    kind = "unsafe name" if is_unsafe_name(name) else "non-regular member"
                    item_id = f"{shard}/#unsafe-{_hash(name, 8)}/{safe_relpath(name)}"
                    yield _err(
                        item_id,
                        f"{uri}#{safe_relpath(name)}",
                        "unsafe_member_name",
                        f"{kind} {name!r} (type {member.type!r}) not read",
                    )
                    continue
                key, ext = _split_key(name)
                if key != group_key:  # flush before reading: a truncated read drops only this key
                    yield from flush()
                    group_key, group = key, []
                extracted = tf.extractfile(member)
                data = extracted.read() if extracted is not None else b""
                group.append((ext, name, data))
            yield from flush()
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:
        # The pending group may be incomplete: it is dropped and covered by this row.
        yield _err(f"{shard}/#truncated", uri, "truncated_tar", _describe(exc))
    except OSError as exc:
        if is_transient(exc):
            raise _TransientMidStream(_describe(exc)) from exc
        yield _err(f"{shard}/#truncated", uri, "truncated_tar", _describe(exc))


def _tar_group(
    uri: str,
    shard: str,
    key: str,
    members: list[tuple[str, str, bytes]],
    seen: set[str],
    dup_count: dict[str, int],
) -> Iterator[SourceItem]:
    safe_key = safe_relpath(key)
    item_id = f"{shard}/{safe_key}"
    exts = [m[0] for m in members]
    if item_id in seen or len(set(exts)) != len(exts):
        n = dup_count.get(item_id, 0) + 1
        dup_count[item_id] = n
        yield _err(
            f"{item_id}#dup{n}",
            f"{uri}#{members[0][1]}",
            "duplicate_key",
            f"key {key!r} repeated in shard (members {[m[1] for m in members]})",
        )
        return
    seen.add(item_id)
    audio = [m for m in members if m[0].rsplit(".", 1)[-1] in AUDIO_EXTS]
    if not audio:
        yield _err(
            item_id,
            f"{uri}#{members[0][1]}",
            "no_audio_member",
            f"key {key!r} has no audio member (extensions {exts})",
        )
        return
    meta: dict[str, Any] = {"__key__": safe_key}
    for ext, name, data in members:
        if (ext, name, data) == audio[0]:
            continue
        if any(name == a[1] for a in audio):
            meta.setdefault("_extra_audio_members", []).append(ext)
        elif ext == "json" or ext.endswith(".json"):
            try:
                meta[ext] = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                meta[ext + "_raw"] = data[:_TEXT_LIMIT].decode("utf-8", errors="replace")
        else:
            try:
                if len(data) > _TEXT_LIMIT:
                    raise UnicodeDecodeError("utf-8", b"", 0, 1, "too large for metadata")
                meta[ext] = data.decode("utf-8")
            except UnicodeDecodeError:
                meta.setdefault("_binary_members", []).append(ext)
    yield SourceItem(
        item_id=item_id,
        source_uri=f"{uri}#{audio[0][1]}",
        data=audio[0][2],
        metadata=_jsonable_dict(meta),
    )


# --- parquet --------------------------------------------------------------------------------


def _detect_audio_column(schema: Any, configured: str | None) -> str | None:
    import pyarrow as pa

    if configured:
        return configured if configured in schema.names else None
    for f in schema:
        if pa.types.is_struct(f.type) and any(
            f.type.field(i).name == "bytes" for i in range(f.type.num_fields)
        ):
            return f.name
    return "audio" if "audio" in schema.names else None


_id_cache: dict[tuple[str, str], bool] = {}


def _read_parquet(
    unit: InputUnit, storage_options: Mapping[str, Any] | None, audio_column: str | None
) -> Iterator[SourceItem]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    uri = unit.uris[0]
    stem = safe_relpath(_strip_suffixes(_relative(uri, unit.root), (".parquet",)))
    if unit.row_group is None:
        yield _err(f"{stem}/#unreadable", uri, "unreadable_object", "parquet footer unreadable")
        return
    rg = unit.row_group
    try:
        fs, path = open_filesystem(uri, storage_options)

        def load() -> tuple[Any, int, Any]:
            with fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                offset = sum(pf.metadata.row_group(i).num_rows for i in range(rg))
                return pf.schema_arrow, offset, pf.read_row_group(rg)

        schema, offset, table = with_retries(load)
    except Exception as exc:  # noqa: BLE001
        _raise_if_transient(exc)
        yield _err(f"{stem}/#rg{rg}", uri, "unreadable_object", _describe(exc))
        return
    col = _detect_audio_column(schema, audio_column)
    if col is None:
        yield _err(
            f"{stem}/#rg{rg}",
            uri,
            "no_audio_column",
            f"no audio column (configured={audio_column!r}; columns {schema.names})",
        )
        return
    id_col = next((c for c in ID_COLUMNS if c in schema.names), None)
    if id_col is not None and not _ids_unique(fs, path, uri, id_col):
        id_col = None
    audio_values = table.column(col).to_pylist()
    other = table.drop_columns([col])
    rows = other.to_pylist()
    is_struct = pa.types.is_struct(schema.field(col).type)
    for i, (audio, row) in enumerate(zip(audio_values, rows, strict=True)):
        index = offset + i
        if id_col is not None:
            item_id = f"{stem}/{safe_relpath(str(row[id_col]))}"
        else:
            item_id = f"{stem}/{index}"
        meta = _jsonable_dict(row)
        data = audio
        if is_struct:
            data = None if audio is None else audio.get("bytes")
            for k, v in (audio or {}).items():
                if k != "bytes" and (j := to_jsonable(v)) is not _DROP:
                    meta[f"{col}_{k}"] = j
        src = f"{uri}#row={index}"
        if data is None:
            yield _err(item_id, src, "null_audio", f"row {index}: audio bytes are null", meta)
            continue
        if not isinstance(data, (bytes, bytearray)):
            yield _err(item_id, src, "bad_audio_column", f"row {index}: audio is not binary")
            continue
        yield SourceItem(item_id=item_id, source_uri=src, data=bytes(data), metadata=meta)


def _ids_unique(fs: fsspec.AbstractFileSystem, path: str, uri: str, id_col: str) -> bool:
    """The id column names items only if it is non-null and unique (after sanitizing) per file."""
    import pyarrow.parquet as pq

    cache_key = (uri, id_col)
    if cache_key not in _id_cache:

        def load() -> list[Any]:
            with fs.open(path, "rb") as f:
                return pq.ParquetFile(f).read(columns=[id_col]).column(0).to_pylist()

        values = with_retries(load)
        ok = all(v is not None and str(v) != "" for v in values)
        ok = ok and len({safe_relpath(str(v)) for v in values}) == len(values)
        if len(_id_cache) > 1024:
            _id_cache.clear()
        _id_cache[cache_key] = ok
    return _id_cache[cache_key]


# --- manifest -------------------------------------------------------------------------------


def resolve_uri(ref: str, manifest_uri: str) -> str:
    """Resolve a manifest entry: absolute URIs stay, relative ones join the manifest's dir."""
    if "://" in ref:
        return ref
    protocol, mpath = split_protocol(manifest_uri)
    if ref.startswith("/"):
        return ref if protocol in (None, "file", "local") else f"{protocol}://{ref.lstrip('/')}"
    base = posixpath.dirname(mpath)
    joined = posixpath.normpath(posixpath.join(base, ref))
    return f"{protocol}://{joined}" if protocol else joined


def _read_manifest(
    unit: InputUnit, storage_options: Mapping[str, Any] | None, uri_column: str | None
) -> Iterator[SourceItem]:
    muri = unit.uris[0]
    stem = safe_relpath(_strip_suffixes(posixpath.basename(_path_of(muri)), MANIFEST_SUFFIXES))
    start, stop = unit.row_range or (0, 0)
    fs, path = open_filesystem(muri, storage_options)
    rows = _manifest_rows(fs, path)  # failure here is a unit failure: the plan just read it
    mproto = protocol_of(muri)
    for index in range(start, min(stop, len(rows))):
        raw, row, problem = rows[index]
        fallback_id = f"{stem}/{index}"
        if row is None:
            yield _err(fallback_id, f"{muri}#row={index}", "bad_manifest_row", problem)
            continue
        id_col = _id_column(row)
        if id_col is not None and row[id_col] not in (None, ""):
            item_id = safe_relpath(str(row[id_col]))
        else:
            item_id = fallback_id
        col = uri_column or next((c for c in URI_COLUMNS if c in row), None)
        ref = row.get(col) if col else None
        meta = _jsonable_dict({k: v for k, v in row.items() if k != col})
        if not isinstance(ref, str) or not ref.strip():
            yield _err(
                item_id,
                f"{muri}#row={index}",
                "bad_manifest_row",
                f"row {index}: no audio URI (column {col!r})",
                meta,
            )
            continue
        audio_uri = resolve_uri(ref.strip(), muri)
        opts = storage_options if protocol_of(audio_uri) == mproto else None
        try:
            data = _read_object(audio_uri, opts)
        except Exception as exc:  # noqa: BLE001
            _raise_if_transient(exc)
            yield _err(item_id, audio_uri, "unreadable_object", _describe(exc), meta)
            continue
        yield SourceItem(item_id=item_id, source_uri=audio_uri, data=bytes(data), metadata=meta)
