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

Input rules (the README's failure taxonomy lists every reason):
  * Globbing happens only through ``glob=``: characters such as ``[`` ``*`` ``?`` ``{`` in an input
    URL are taken literally (real folder names contain them).
  * Local special files: only regular files are read. A FIFO, socket, device or directory named like
    audio becomes an error row ``not_a_regular_file`` (opened non-blocking, so nothing can hang).
    Symbolic links are followed only inside the input root (``link_outside_root`` otherwise, unless
    ``ReadPolicy.follow_links``); loops and dangling links are ``broken_link``.
  * Size: an object larger than ``ReadPolicy.max_item_bytes`` is ``too_large`` and never read whole.
    With a `Spooler` (``read_unit(spool=)``), a file, a manifest entry or an audio tar member of
    ``spool.min_bytes`` or more (size from the listing, ``stat``, a HEAD request or the tar header)
    is never read whole either: it is copied in bounded chunks to a local file (`SourceItem.path`,
    `pipeline.io.spool`), with the same retries, timeout and error reasons as a whole read; a local
    file that cannot be written is ``spill_failed``. The file is deleted when the consumer asks for
    the next item.
  * A manifest kept on an object store may only name objects of its own scheme; local paths
    (``file://`` or bare) and other schemes are ``uri_not_allowed`` unless listed in
    ``ReadPolicy.allow_manifest_schemes``. Relative entries may not climb out of the manifest's
    folder (``uri_not_allowed``). Unknown schemes are ``unsupported_scheme``. An object on another
    host that cannot be reached after retries is ``unreachable`` (the item's problem); trouble with
    the manifest's own store stays an outage that fails the unit (a rerun resumes it).
  * Ids are unique by construction: an id is the item's path relative to the input root (tar:
    ``<shard>/<key>``, parquet: ``<file>/<id or row>``, manifest: its id column or
    ``<manifest>/<row>``), exact bytes, case- and Unicode-normalization-sensitive. When making a
    name safe changes it (``./x``, ``a\\b``, control characters) the id gets ``~<hash>`` of the
    original, so it cannot collide with an untouched name. Shards keep their suffix unless it is
    ``.tar`` (``x.tar`` → ``x``, ``x.tgz`` → ``x.tgz``). A manifest row repeating an earlier row is
    ``duplicate_item``; a row reusing an earlier row's id for another object is ``duplicate_id``;
    both keep a ``#dup<row>`` id. ``id_prefix`` namespaces a second input root in one output.

Parquet metadata policy: non-audio columns go to ``metadata`` converted to JSON-able values;
binary values are dropped (they are usually other blobs and would bloat every token row),
non-finite floats become None, dates/decimals become strings.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import decimal
import functools
import gzip
import hashlib
import io
import itertools
import json
import logging
import lzma
import math
import os
import posixpath
import re
import socket
import stat
import tarfile
import threading
import zlib
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import fsspec
from fsspec.core import split_protocol
from fsspec.utils import glob_translate

from pipeline.io.spool import CHUNK, Spooled, Spooler, SpoolTooLarge, SpoolWriteError
from pipeline.io.storage import (
    full_uri,
    is_transient,
    open_filesystem,
    protocol_of,
    redact_uri,
    source_stamp,
    with_retries,
)
from pipeline.records import InputUnit, ItemError, SourceItem

log = logging.getLogger(__name__)

AUDIO_EXTS = frozenset({"wav", "flac", "mp3", "ogg", "oga", "opus", "m4a", "aac", "webm", "mp4"})
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MANIFEST_SUFFIXES = (".jsonl", ".csv")
URI_COLUMNS = ("audio", "uri", "path", "audio_filepath", "audio_path", "file")
ID_COLUMNS = ("id", "key", "__key__")
KINDS = ("files", "tar", "parquet", "manifest")
_UNIT_ID_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TAR_BLOCK = 8 * 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class ReadPolicy:
    """What readers may touch and how long and how much they may read per item (see module doc)."""

    max_item_bytes: int = 4 * 2**30
    item_timeout_s: float = 300.0  # one item's read; a read that never returns becomes an error row
    follow_links: bool = False  # follow symbolic links out of the input root
    allow_manifest_schemes: tuple[str, ...] = ()  # e.g. ("file",) for a remote manifest naming local files


DEFAULT_POLICY = ReadPolicy()


def read_policy_for(config: Any) -> ReadPolicy:
    """The read policy a tokenize config asks for (`max_item_bytes`, `item_timeout_s`,
    `follow_links`, `allow_manifest_schemes`): tokenize reads its inputs with it, and the audit
    reads the same originals again with it."""
    return ReadPolicy(
        max_item_bytes=config.max_item_bytes,
        item_timeout_s=config.item_timeout_s,
        follow_links=config.follow_links,
        allow_manifest_schemes=tuple(config.allow_manifest_schemes),
    )


class ItemReadError(Exception):
    """One item cannot be read; ``reason`` is the error row's reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


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


def unique_safe_id(name: str) -> str:
    """`safe_relpath(name)`, plus ``~<hash of name>`` when that changed the name: an id made safe can
    never collide with an id that needed no change (``./x`` vs ``x``, ``a\\b`` vs ``a/b``)."""
    safe = safe_relpath(name)
    return safe if safe == name else f"{safe}~{_hash(name, 8)}"


def _fit_id(text: str, limit: int = 120) -> str:
    """A unit id within `limit` characters: long ones keep their head and a digest of the whole."""
    return text if len(text) <= limit else f"{text[: limit - 13]}-{_hash(text, 12)}"


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


def _list_files(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, dict[str, Any]]:
    """Every non-directory entry under path (special files and links included: readers turn them
    into error rows), path → info, sorted; directory markers excluded."""
    found = with_retries(lambda: fs.find(path, withdirs=False, detail=True))
    return {
        p: info
        for p, info in sorted(found.items())
        if info.get("type", "file") != "directory" and not p.endswith("/")
    }


def escape_glob(path: str) -> str:
    """A literal path inside a glob pattern: ``[`` ``*`` ``?`` match only themselves."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def _is_under(path: str, folder: str) -> bool:
    folder = folder.rstrip("/")
    return path == folder or path.startswith(folder + "/")


def _walk_sorted(
    fs: fsspec.AbstractFileSystem,
    top: str,
    skip_folder: str | None = None,
    max_depth: int | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """`_list_files(fs, top)`, lazily: the same (path, info) pairs in the same sorted order, listing
    one folder at a time, so memory holds the folders on the current path, not the whole tree.

    Why a walk of our own: `find` returns the whole tree at once (and s3fs caches it). A folder's
    entries are sorted by name with a subfolder keyed `name/` — exactly where its contents fall
    among sorted full paths (`a-b` < `a/x` because `-` < `/`), so a depth-first walk yields
    `sorted(find())`. Subfolders under `skip_folder` are not even listed, nor (with `max_depth`,
    like `find(maxdepth=)`) folders deeper than `max_depth` levels below `top`. Like fsspec's
    `walk`, a folder that cannot be listed is left out (locally any OSError; object stores: not
    found)."""
    omit: tuple[type[BaseException], ...] = (OSError,) if is_local_fs(fs) else (FileNotFoundError,)

    def children(folder: str) -> list[tuple[str, str, dict[str, Any], bool]]:
        try:
            listing = with_retries(lambda: fs.ls(folder, detail=True))
        except omit:
            return []
        finally:
            try:
                fs.invalidate_cache(folder)  # s3fs keeps every listing otherwise
            except Exception:  # noqa: BLE001 - a cache that cannot be dropped only costs memory
                pass
        found = []
        for info in listing:
            name = info["name"]
            if name.rstrip("/") == folder.rstrip("/"):
                continue  # some stores list a folder's own marker
            if skip_folder is not None and _is_under(name, skip_folder):
                continue
            is_dir = info.get("type", "file") == "directory"
            if not is_dir and name.endswith("/"):
                continue  # directory marker objects
            key = name.rstrip("/") + "/" if is_dir else name
            found.append((key, name.rstrip("/") if is_dir else name, info, is_dir))
        found.sort(key=lambda entry: entry[0])
        return found

    stack = [iter(children(top))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        _, name, info, is_dir = entry
        if not is_dir:
            yield name, info
        elif max_depth is None or len(stack) < max_depth:
            stack.append(iter(children(name)))


_MAGIC = re.compile(r"[*?\[]")


def _glob_walk(
    fs: fsspec.AbstractFileSystem, path: str, glob: str, skip_folder: str | None
) -> Callable[[], Iterator[tuple[str, dict[str, Any]]]] | None:
    """The files `fs.glob(path/glob)` matches, lazily: a `_walk_sorted` from the glob's literal
    folder (to the glob's depth unless it holds `**`), each name matched with the regex fsspec's
    glob builds (`glob_translate`), so the same files in the same sorted order. None for globs a
    walk cannot mirror (no wildcard at all, `.` / `..` / empty components): plan those eagerly."""
    parts = glob.split("/")
    if not glob or not _MAGIC.search(glob) or any(part in ("", ".", "..") for part in parts[:-1]):
        return None
    if parts[-1] in (".", ".."):
        return None
    literal = list(itertools.takewhile(lambda part: not _MAGIC.search(part), parts[:-1]))
    top = posixpath.join(path, *literal) if literal else path
    rest = parts[len(literal) :]
    max_depth = None if any("**" in part for part in rest) else len(rest)
    pattern = posixpath.join(escape_glob(path), glob)
    stripped = fs._strip_protocol(pattern) + ("/" if pattern.endswith("/") else "")
    regex = re.compile(glob_translate(stripped))

    def listing() -> Iterator[tuple[str, dict[str, Any]]]:
        for name, info in _walk_sorted(fs, top, skip_folder, max_depth):
            if regex.match(name):
                yield name, info

    return listing


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local file system (where fsspec's own walk omits unreadable folders)."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def plan_units(
    input_url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    kind: str = "auto",
    files_per_unit: int = 256,
    exclude_uris: Container[str] = frozenset(),
    glob: str | None = None,
    exclude_under: str | None = None,
    id_prefix: str = "",
    seen: StampMarks | None = None,
) -> list[InputUnit]:
    """List the input and cut it into deterministic units (sorted listing -> stable ids).

    ``exclude_uris`` removes already-committed inputs (file URIs, shard URIs, parquet URIs) so an
    incremental run only plans new work. Both full URIs (file:///...) and bare paths match.
    ``exclude_under`` (a URL on the same store, e.g. the job's output) is never listed as input.
    ``id_prefix`` goes before every item id and names the units apart (a second input root).
    ``seen`` (when given) receives full URI → current stamp of every excluded file that is still
    listed, so the caller can tell changed and deleted inputs from unchanged ones.
    The input URL is literal; only ``glob`` is a pattern, matched below it. A missing input raises
    FileNotFoundError. This lists the whole input first (one `find`); `iter_units` cuts the same
    units, in the same order, while it lists.
    """
    _check_plan_args(kind, files_per_unit)
    return list(
        _plan(
            input_url,
            storage_options,
            kind,
            files_per_unit,
            exclude_uris,
            glob,
            exclude_under,
            id_prefix,
            seen,
            lazy=False,
        )
    )


def iter_units(
    input_url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    kind: str = "auto",
    files_per_unit: int = 256,
    exclude_uris: Container[str] = frozenset(),
    glob: str | None = None,
    exclude_under: str | None = None,
    id_prefix: str = "",
    seen: StampMarks | None = None,
) -> Iterator[InputUnit]:
    """`plan_units`, streaming: the same units in the same order, each yielded as soon as the
    listing has reached past it, listing one folder at a time (`_walk_sorted`).

    What cannot stream, and costs what: `kind="auto"` needs the whole listing to choose a kind
    (any `.parquet` makes it parquet, else any tar makes it tar), so it lists once to decide
    (stopping at the first `.parquet`) and again to plan: pass the kind to skip that pass. A
    `glob` walks from its literal folder and matches each listed name as fsspec's glob would
    (`_glob_walk`; a glob without wildcards is looked up whole), and a single file or manifest
    input is one object anyway. ``seen`` is complete once the iterator is exhausted. Memory:
    the units not yet consumed plus the listings of the folders on the current path (the
    largest single folder is the ceiling: ~0.5 KB per object in it)."""
    _check_plan_args(kind, files_per_unit)
    return _plan(
        input_url,
        storage_options,
        kind,
        files_per_unit,
        exclude_uris,
        glob,
        exclude_under,
        id_prefix,
        seen,
        lazy=True,
    )


class StampMarks(Protocol):
    """Where the listing marks committed files it still sees: `marks[uri] = current stamp`."""

    def __setitem__(self, uri: str, stamp: str, /) -> None: ...


def _check_plan_args(kind: str, files_per_unit: int) -> None:
    if kind not in ("auto", *KINDS):
        raise ValueError(f"unknown kind {kind!r}; expected auto or one of {KINDS}")
    if files_per_unit < 1:
        raise ValueError("files_per_unit must be >= 1")


def _plan(
    input_url: str,
    storage_options: Mapping[str, Any] | None,
    kind: str,
    files_per_unit: int,
    exclude_uris: Container[str],
    glob: str | None,
    exclude_under: str | None,
    id_prefix: str,
    seen: StampMarks | None,
    *,
    lazy: bool,
) -> Iterator[InputUnit]:
    """Both planners: one listing (whole and sorted, or a lazy sorted walk), one cutting."""
    fs, path = open_filesystem(input_url, storage_options)
    path = path.rstrip("/") or path
    excluded = exclude_uris  # a set, or the planner's compact `CommittedFiles`
    skip_folder = None
    if exclude_under is not None and protocol_of(exclude_under) == protocol_of(input_url):
        skip_folder = open_filesystem(exclude_under, storage_options)[1].rstrip("/")

    def is_excluded(p: str, info: Mapping[str, Any]) -> bool:
        uri = full_uri(fs, p)
        # Manifests record URIs redacted (no credentials in outputs): compare that spelling too.
        key = next((k for k in (uri, p, redact_uri(uri)) if k in excluded), None)
        if key is None:
            return False
        if seen is not None:
            seen[key] = source_stamp(info)
        return True

    listing: Callable[[], Iterator[tuple[str, dict[str, Any]]]]
    walk_glob = _glob_walk(fs, path, glob, skip_folder) if lazy and glob is not None else None
    if walk_glob is not None:
        root_path, infos, is_single = path, {}, False
    elif glob is not None:
        pattern = posixpath.join(escape_glob(path), glob)
        root_path = path
        matched = with_retries(lambda: fs.glob(pattern, detail=True))
        infos = {
            p: info
            for p, info in sorted(matched.items())
            if info.get("type", "file") != "directory" and not p.endswith("/")
        }
        is_single = False
    elif with_retries(lambda: fs.isfile(path)):
        root_path = posixpath.dirname(path)
        infos = {path: with_retries(lambda: fs.info(path))}
        is_single = True
    else:
        root_path = path
        if not with_retries(lambda: fs.exists(path)):
            raise FileNotFoundError(f"input not found: {input_url}")
        infos = {} if lazy else _list_files(fs, path)
        is_single = False
    if walk_glob is not None:
        listing = walk_glob
    elif lazy and glob is None and not is_single:

        def listing() -> Iterator[tuple[str, dict[str, Any]]]:
            return _walk_sorted(fs, path, skip_folder)

    else:
        if skip_folder is not None:
            infos = {p: i for p, i in infos.items() if not _is_under(p, skip_folder)}

        def listing() -> Iterator[tuple[str, dict[str, Any]]]:
            return iter(infos.items())

    root = full_uri(fs, root_path) if root_path else full_uri(fs, "")
    if kind == "auto":
        kind = _detect_kind_in(listing(), is_single)
        log.info("input %s: detected kind %r", input_url, kind)
    units = _cut_units(fs, listing(), kind, root, files_per_unit, is_excluded, storage_options)
    if not id_prefix:
        yield from units
        return
    slug, digest = _unit_slug(id_prefix, 24), _hash(id_prefix, 6)
    for unit in units:
        unit_id = _fit_id(f"{slug}-{digest}-{unit.unit_id}")
        yield dataclasses.replace(unit, unit_id=unit_id, id_prefix=id_prefix)


def _cut_units(
    fs: fsspec.AbstractFileSystem,
    entries: Iterator[tuple[str, dict[str, Any]]],
    kind: str,
    root: str,
    files_per_unit: int,
    is_excluded: Callable[[str, Mapping[str, Any]], bool],
    storage_options: Mapping[str, Any] | None,
) -> Iterator[InputUnit]:
    """Units of `kind` from sorted (path, info) pairs: files chunked `files_per_unit` at a time,
    one per tar shard, one per parquet row group, manifest rows in ranges."""
    if kind == "manifest":
        first = list(itertools.islice(entries, 2))
        if len(first) != 1:
            raise ValueError("manifest input must be a single .jsonl/.csv file URL")
        (p, info), stamp = first[0], (source_stamp(first[0][1]),)
        yield from (_with_stamps(u, stamp) for u in _plan_manifest(fs, p, files_per_unit, storage_options))
    elif kind == "tar":
        for p, info in entries:
            if _is_tar_name(p) and not is_excluded(p, info):
                yield _with_stamps(_tar_unit(fs, p, root), (source_stamp(info),))
    elif kind == "parquet":
        for p, info in entries:
            if p.lower().endswith(".parquet") and not is_excluded(p, info):
                yield from (_with_stamps(u, (source_stamp(info),)) for u in _plan_parquet_file(fs, p, root))
    else:
        chunk: list[tuple[str, dict[str, Any]]] = []
        for p, info in entries:
            if _is_audio_name(p) and not is_excluded(p, info):
                chunk.append((p, info))
                if len(chunk) == files_per_unit:
                    yield _files_unit(fs, chunk, root)
                    chunk = []
        if chunk:
            yield _files_unit(fs, chunk, root)


def _files_unit(
    fs: fsspec.AbstractFileSystem, chunk: list[tuple[str, dict[str, Any]]], root: str
) -> InputUnit:
    uris = tuple(full_uri(fs, p) for p, _ in chunk)
    return InputUnit(
        unit_id="files-" + _hash("\n".join(uris)),
        kind="files",
        uris=uris,
        root=root,
        stamps=tuple(source_stamp(info) for _, info in chunk),
    )


def _with_stamps(unit: InputUnit, stamps: tuple[str, ...]) -> InputUnit:
    return dataclasses.replace(unit, stamps=stamps)


def _detect_kind_in(entries: Iterator[tuple[str, dict[str, Any]]], is_single: bool) -> str:
    """The kind of an input from its listing: a single .jsonl/.csv is a manifest; else any
    .parquet makes it parquet (the listing stops there), else any tar makes it tar; else files."""
    has_tar = False
    for index, (p, _) in enumerate(entries):
        low = p.lower()
        if index == 0 and is_single and low.endswith(MANIFEST_SUFFIXES):
            return "manifest"
        if low.endswith(".parquet"):
            return "parquet"
        has_tar = has_tar or low.endswith(TAR_SUFFIXES)
    return "tar" if has_tar else "files"


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
    rows = _manifest_rows(fs, path)  # repeated rows and ids become error rows when read
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
    policy: ReadPolicy = DEFAULT_POLICY,
    spool: Spooler | None = None,
) -> Iterator[SourceItem]:
    """Yield one SourceItem per input item of the unit; per-item failures are error rows.

    ``spool``: big items come as local files (`SourceItem.path`, ``data`` None), each deleted when
    the next item is asked for or the iteration ends (parquet cells are in memory already: never)."""
    if unit.kind == "files":
        items = _read_files(unit, storage_options, policy, spool)
    elif unit.kind == "tar":
        items = _read_tar(unit, storage_options, policy, spool)
    elif unit.kind == "parquet":
        items = _read_parquet(unit, storage_options, audio_column)
    elif unit.kind == "manifest":
        items = _read_manifest(unit, storage_options, uri_column, policy, spool)
    else:
        raise ValueError(f"unknown unit kind {unit.kind!r}")
    try:
        for item in items:
            if unit.id_prefix:
                item.item_id = unit.id_prefix + item.item_id
            yield item
            if spool is not None:  # the consumer is done with the item: its file goes
                spool.release_all()
    finally:
        if spool is not None:
            spool.release_all()


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


def _call_with_timeout(
    fn: Callable[[], T], timeout_s: float, what: str, cancel: threading.Event | None = None
) -> T:
    """Run a blocking read in a daemon thread; past `timeout_s` the item is given up
    (`read_timeout`) and the thread is left behind, so a read that never returns costs one thread,
    never the job. `cancel` is set then: a chunked copy stops at its next chunk."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"semtok-read {what[:40]}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        if cancel is not None:
            cancel.set()
        raise ItemReadError("read_timeout", f"no answer within {timeout_s:g} s reading {what}")
    if failure:
        raise failure[0]
    return result[0]


_FILE_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def _local_target(path: str, root: str | None, policy: ReadPolicy) -> str:
    """The regular file a local path names, or ItemReadError (see the module doc's rules)."""
    info = os.lstat(path)
    target = path
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.path.realpath(path, strict=True)
        except OSError as exc:
            raise ItemReadError("broken_link", f"symbolic link loops or dangles: {exc.strerror}") from None
        if root is not None and not policy.follow_links:
            real_root = os.path.realpath(root)
            if not _is_under(target, real_root):
                raise ItemReadError(
                    "link_outside_root",
                    f"symbolic link leads out of the input root to {target!r} (follow_links allows it)",
                )
        info = os.stat(target)
    if not stat.S_ISREG(info.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise ItemReadError("not_a_regular_file", f"{kind}, not read")
    if info.st_size > policy.max_item_bytes:
        raise ItemReadError("too_large", f"{info.st_size} bytes > max_item_bytes={policy.max_item_bytes}")
    return target


def _read_local(
    path: str,
    root: str | None,
    policy: ReadPolicy,
    spool: Spooler | None = None,
    cancel: threading.Event | None = None,
) -> bytes | Spooled:
    target = _local_target(path, root, policy)
    # Non-blocking open, then a check of what was opened: a file swapped for a FIFO after the
    # check above still cannot block.
    fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ItemReadError("not_a_regular_file", "changed into a special file while read")
        if spool is not None and spool.wants(info.st_size):
            return _spool_copy(spool, lambda: handle, policy, cancel, info.st_size)
        data = handle.read(policy.max_item_bytes + 1)
    if len(data) > policy.max_item_bytes:
        raise ItemReadError("too_large", f"more than max_item_bytes={policy.max_item_bytes} bytes")
    return data


def _spool_copy(
    spool: Spooler,
    open_stream: Callable[[], Any],
    policy: ReadPolicy,
    cancel: threading.Event | None,
    size: int | None,
) -> Spooled:
    """`Spooler.copy` with the read policy's byte budget; its failures as the reader's reasons (the
    stream's own errors pass through, to be classified as a whole read's are)."""
    try:
        return spool.copy(open_stream, limit=policy.max_item_bytes, cancel=cancel, expected=size)
    except SpoolTooLarge:
        raise ItemReadError("too_large", f"more than max_item_bytes={policy.max_item_bytes} bytes") from None
    except SpoolWriteError as exc:
        raise ItemReadError(exc.reason, exc.detail) from None


def _source_item(item_id: str, uri: str, got: bytes | Spooled, meta: dict[str, Any]) -> SourceItem:
    """A read item: its bytes in memory, or (spooled) the local file that holds them."""
    if isinstance(got, Spooled):
        return SourceItem(item_id=item_id, source_uri=uri, data=None, metadata=meta, path=got.path)
    return SourceItem(item_id=item_id, source_uri=uri, data=bytes(got), metadata=meta)


def _size_from_stamp(stamp: str) -> int | None:
    match = re.match(r"size:(\d+)", stamp or "")
    return int(match.group(1)) if match else None


def _read_object(
    uri: str,
    storage_options: Mapping[str, Any] | None,
    policy: ReadPolicy = DEFAULT_POLICY,
    *,
    root: str | None = None,
    known_size: int | None = None,
    spool: Spooler | None = None,
) -> bytes | Spooled:
    """Whole object as bytes, within the policy's size and time bounds (ItemReadError otherwise);
    with `spool`, an object of `spool.min_bytes` or more as a local file instead (`Spooled`).

    `root`: the local input root that links may not leave; `known_size` (from the listing) spares
    object stores a HEAD request before the size check."""
    try:
        fs, path = open_filesystem(uri, storage_options)
    except (ValueError, ImportError) as exc:
        raise ItemReadError("unsupported_scheme", f"cannot open {protocol_of(uri)!r} URIs: {exc}") from None
    cancel = threading.Event()
    if protocol_of(uri) in ("file", "local"):
        return _call_with_timeout(
            lambda: _read_local(path, root, policy, spool, cancel), policy.item_timeout_s, uri, cancel
        )

    def fetch() -> bytes | Spooled:
        size = known_size
        if size is None:
            size = with_retries(lambda: fs.info(path)).get("size")
        if size is not None and int(size) > policy.max_item_bytes:
            raise ItemReadError("too_large", f"{size} bytes > max_item_bytes={policy.max_item_bytes}")
        if spool is not None and spool.wants(size):
            # each attempt copies from the start into a fresh file (a failed one deletes its own)
            return with_retries(
                lambda: _spool_copy(
                    spool, lambda: fs.open(path, "rb", block_size=CHUNK), policy, cancel, int(size)
                )
            )
        return with_retries(lambda: fs.cat_file(path))

    return _call_with_timeout(fetch, policy.item_timeout_s, uri, cancel)


def _read_error(item_id: str, uri: str, exc: BaseException, meta: dict | None = None) -> SourceItem:
    """An exception of one item's read as its error row (transient trouble was raised already)."""
    if isinstance(exc, ItemReadError):
        return _err(item_id, uri, exc.reason, exc.detail, meta)
    return _err(item_id, uri, "unreadable_object", _describe(exc), meta)


def file_item_id(unit: InputUnit, uri: str) -> str:
    """The id of one file of a `files` unit (without the unit's `id_prefix`)."""
    return unique_safe_id(_relative(uri, unit.root))


def _read_files(
    unit: InputUnit,
    storage_options: Mapping[str, Any] | None,
    policy: ReadPolicy,
    spool: Spooler | None = None,
) -> Iterator[SourceItem]:
    local_root = _path_of(unit.root) if protocol_of(unit.root or "file://") in ("file", "local") else None
    for index, uri in enumerate(unit.uris):
        item_id = file_item_id(unit, uri)
        stamp = unit.stamps[index] if index < len(unit.stamps) else ""
        try:
            data = _read_object(
                uri,
                storage_options,
                policy,
                root=local_root,
                known_size=_size_from_stamp(stamp),
                spool=spool,
            )
        except Exception as exc:  # noqa: BLE001 - per-item failure becomes an error row
            _raise_if_transient(exc)
            yield _read_error(item_id, uri, exc)
            continue
        yield _source_item(item_id, uri, data, {})


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


def _read_tar(
    unit: InputUnit,
    storage_options: Mapping[str, Any] | None,
    policy: ReadPolicy = DEFAULT_POLICY,
    spool: Spooler | None = None,
) -> Iterator[SourceItem]:
    """Stream a shard; on a transient error mid-stream, reopen and skip items already yielded."""
    emitted = 0
    attempts = 4
    for attempt in range(attempts):
        produced = 0
        try:
            for item in _tar_items(unit, storage_options, policy, spool):
                produced += 1
                if produced <= emitted:
                    if spool is not None:  # read again only to find our place: its file goes
                        spool.release_all()
                    continue
                emitted += 1
                yield item
            return
        except _TransientMidStream as exc:
            if spool is not None:  # the pending group's files
                spool.release_all()
            if attempt == attempts - 1:  # an outage, not a broken shard: fail the unit (see above)
                raise OSError(f"storage kept failing while reading {unit.uris[0]}: {exc}") from exc
            log.warning("transient error mid-shard %s, reopening", unit.unit_id)


def _shard_key(unit: InputUnit) -> str:
    """``x.tar`` → ``x``; other suffixes stay (``x.tgz``), so ``x.tar`` and ``x.tgz`` differ."""
    rel = _relative(unit.uris[0], unit.root)
    stem = rel[: -len(".tar")] if rel.lower().endswith(".tar") else rel
    return unique_safe_id(stem)


# A tar member as read: bytes; a spooled file; None (over max_item_bytes, never read); or the
# ItemReadError of a member that could not be spooled.
_Member = tuple[str, str, bytes | Spooled | ItemReadError | None]


def _tar_items(
    unit: InputUnit,
    storage_options: Mapping[str, Any] | None,
    policy: ReadPolicy,
    spool: Spooler | None = None,
) -> Iterator[SourceItem]:
    uri = unit.uris[0]
    shard = _shard_key(unit)
    try:
        fs, path = open_filesystem(uri, storage_options)
        if protocol_of(uri) in ("file", "local"):
            _local_target(path, _path_of(unit.root), dataclasses.replace(policy, max_item_bytes=2**62))
        fobj = with_retries(lambda: fs.open(path, "rb", block_size=_TAR_BLOCK))
    except Exception as exc:  # noqa: BLE001
        _raise_if_transient(exc)
        yield _read_error(f"{shard}/#unreadable", uri, exc)
        return
    seen: set[str] = set()
    dup_count: dict[str, int] = {}
    group_key: str | None = None
    group: list[_Member] = []  # (ext, member name, data)

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
                if member.size > policy.max_item_bytes:  # never read: the tar stream skips it
                    group.append((ext, name, None))
                    continue
                extracted = tf.extractfile(member)
                data: bytes | Spooled | ItemReadError
                if extracted is None:
                    data = b""
                elif spool is not None and _is_audio_ext(ext) and spool.wants(member.size):
                    # the stream's errors pass through: classified below, as a whole read's are
                    try:
                        # lent to the copy, which closes what it opens: the tar's stream stays open
                        stream = functools.partial(contextlib.nullcontext, extracted)
                        data = _spool_copy(spool, stream, policy, None, member.size)
                    except ItemReadError as exc:  # the local file could not be written
                        data = exc
                else:
                    data = extracted.read()
                group.append((ext, name, data))
            yield from flush()
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:
        # The pending group may be incomplete: it is dropped and covered by this row.
        yield _err(f"{shard}/#truncated", uri, "truncated_tar", _describe(exc))
    except OSError as exc:
        if is_transient(exc):
            raise _TransientMidStream(_describe(exc)) from exc
        yield _err(f"{shard}/#truncated", uri, "truncated_tar", _describe(exc))


def _is_audio_ext(ext: str) -> bool:
    return ext.rsplit(".", 1)[-1] in AUDIO_EXTS


def _tar_group(
    uri: str,
    shard: str,
    key: str,
    members: list[_Member],
    seen: set[str],
    dup_count: dict[str, int],
) -> Iterator[SourceItem]:
    safe_key = unique_safe_id(key)
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
    oversized = [name for _, name, data in members if data is None]
    if oversized:
        yield _err(
            item_id,
            f"{uri}#{safe_relpath(oversized[0])}",
            "too_large",
            f"member(s) {oversized} larger than max_item_bytes",
        )
        return
    audio = [m for m in members if _is_audio_ext(m[0])]
    if not audio:
        yield _err(
            item_id,
            f"{uri}#{members[0][1]}",
            "no_audio_member",
            f"key {key!r} has no audio member (extensions {exts})",
        )
        return
    chosen = audio[0][2]
    if isinstance(chosen, ItemReadError):
        yield _err(item_id, f"{uri}#{audio[0][1]}", chosen.reason, chosen.detail)
        return
    meta: dict[str, Any] = {"__key__": safe_key}
    for ext, name, data in members:
        if (ext, name, data) == audio[0] or not isinstance(data, bytes):
            if isinstance(data, (Spooled, ItemReadError)) and (ext, name, data) != audio[0]:
                meta.setdefault("_extra_audio_members", []).append(ext)  # only audio is spooled
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
    assert chosen is not None  # None (too large) ended the group above
    yield _source_item(item_id, f"{uri}#{audio[0][1]}", chosen, _jsonable_dict(meta))


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
    stem = unique_safe_id(_strip_suffixes(_relative(uri, unit.root), (".parquet",)))
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
            item_id = f"{stem}/{unique_safe_id(str(row[id_col]))}"
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
        ok = ok and len({unique_safe_id(str(v)) for v in values}) == len(values)
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


def check_manifest_ref(ref: str, manifest_uri: str, policy: ReadPolicy = DEFAULT_POLICY) -> str:
    """The URI a manifest entry may be read from, or ItemReadError(`uri_not_allowed`).

    A manifest on an object store names objects of its own scheme only (a bucket's manifest must
    not make workers read their local disks); relative entries stay inside the manifest's folder.
    """
    mproto = protocol_of(manifest_uri)
    is_local_manifest = mproto in ("file", "local")
    scheme = split_protocol(ref)[0] if "://" in ref else None
    if scheme is None and not ref.startswith("/"):
        base = posixpath.dirname(_path_of(manifest_uri))
        joined = posixpath.normpath(posixpath.join(base, ref))
        if not _is_under(joined, base):
            raise ItemReadError(
                "uri_not_allowed", f"relative entry {ref!r} climbs out of the manifest's folder"
            )
    uri = resolve_uri(ref, manifest_uri)
    target = protocol_of(uri)
    if target in ("local",):
        target = "file"
    if scheme is None and ref.startswith("/") and not is_local_manifest:
        target = "file"  # a bare absolute path in a bucket's manifest would be a local path
        uri = ref
    if target not in fsspec.available_protocols() and target != "file":
        raise ItemReadError("unsupported_scheme", f"unknown URI scheme {target!r}")
    if not is_local_manifest and target != mproto and target not in policy.allow_manifest_schemes:
        raise ItemReadError(
            "uri_not_allowed",
            f"a {mproto}:// manifest may not name {target}:// objects (allow_manifest_schemes allows it)",
        )
    return uri


def _same_store(uri: str, manifest_uri: str) -> bool:
    """Whether an entry lives on the manifest's own store: its trouble is then an outage."""
    if protocol_of(uri) != protocol_of(manifest_uri):
        return False
    if protocol_of(uri) in ("http", "https"):
        return _path_of(uri).split("/", 1)[0] == _path_of(manifest_uri).split("/", 1)[0]
    return True


def _repeats(rows: list[tuple[str, dict[str, Any] | None, str]]) -> dict[int, tuple[str, int]]:
    """Row index → (reason, first row) for rows repeating an earlier row or reusing its id."""
    first_line: dict[str, int] = {}
    first_id: dict[str, int] = {}
    repeats: dict[int, tuple[str, int]] = {}
    for index, (raw, row, _) in enumerate(rows):
        if row is None:
            continue
        if raw in first_line:
            repeats[index] = ("duplicate_item", first_line[raw])
            continue
        first_line[raw] = index
        column = _id_column(row)
        if column is not None and row[column] not in (None, ""):
            key = unique_safe_id(str(row[column]))
            if key in first_id:
                repeats[index] = ("duplicate_id", first_id[key])
            else:
                first_id[key] = index
    return repeats


_repeats_cache: dict[str, Any] = {}


def _read_manifest(
    unit: InputUnit,
    storage_options: Mapping[str, Any] | None,
    uri_column: str | None,
    policy: ReadPolicy = DEFAULT_POLICY,
    spool: Spooler | None = None,
) -> Iterator[SourceItem]:
    muri = unit.uris[0]
    stem = unique_safe_id(_strip_suffixes(posixpath.basename(_path_of(muri)), MANIFEST_SUFFIXES))
    start, stop = unit.row_range or (0, 0)
    fs, path = open_filesystem(muri, storage_options)
    rows = _manifest_rows(fs, path)  # failure here is a unit failure: the plan just read it
    if _repeats_cache.get("rows") is not rows:
        _repeats_cache.update(rows=rows, repeats=_repeats(rows))
    repeats = _repeats_cache["repeats"]
    mproto = protocol_of(muri)
    for index in range(start, min(stop, len(rows))):
        raw, row, problem = rows[index]
        fallback_id = f"{stem}/{index}"
        if row is None:
            yield _err(fallback_id, f"{muri}#row={index}", "bad_manifest_row", problem)
            continue
        id_col = _id_column(row)
        if id_col is not None and row[id_col] not in (None, ""):
            item_id = unique_safe_id(str(row[id_col]))
        else:
            item_id = fallback_id
        col = uri_column or next((c for c in URI_COLUMNS if c in row), None)
        ref = row.get(col) if col else None
        meta = _jsonable_dict({k: v for k, v in row.items() if k != col})
        if index in repeats:
            reason, first = repeats[index]
            what = "repeats" if reason == "duplicate_item" else "reuses the id of"
            yield _err(
                f"{item_id}#dup{index}",
                f"{muri}#row={index}",
                reason,
                f"row {index} {what} row {first}",
                meta,
            )
            continue
        if not isinstance(ref, str) or not ref.strip():
            yield _err(
                item_id,
                f"{muri}#row={index}",
                "bad_manifest_row",
                f"row {index}: no audio URI (column {col!r})",
                meta,
            )
            continue
        try:
            audio_uri = check_manifest_ref(ref.strip(), muri, policy)
        except ItemReadError as exc:
            yield _err(item_id, f"{muri}#row={index}", exc.reason, exc.detail, meta)
            continue
        same_store = _same_store(audio_uri, muri)
        opts = storage_options if protocol_of(audio_uri) == mproto else None
        try:
            data = with_retries(
                # Entries are named explicitly: links are followed (root=None), special files refused.
                functools.partial(_read_object, audio_uri, opts, policy, root=None, spool=spool),
                attempts=3,
                retry_if=_is_unreachable,
            )
        except Exception as exc:  # noqa: BLE001
            if same_store and (is_transient(exc) or _is_unreachable(exc)):
                raise  # the manifest's own store is down: an outage fails the unit, a rerun resumes
            if is_transient(exc) or _is_unreachable(exc):
                yield _err(item_id, audio_uri, "unreachable", _describe(exc), meta)
                continue
            yield _read_error(item_id, audio_uri, exc, meta)
            continue
        yield _source_item(item_id, audio_uri, data, meta)


def _is_unreachable(exc: BaseException) -> bool:
    """Name resolution or connection failure anywhere in the exception's chain (fsspec's HTTP
    reader reports a refused connection as FileNotFoundError caused by it)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        text = f"{type(current).__name__} {current}".lower()
        if any(
            m in text
            for m in (
                "name or service not known",
                "getaddrinfo",
                "cannot connect",
                "connect call failed",
                "no route to host",
                "clientconnector",
            )
        ):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False
