"""The consolidated manifest: index files that fold many per-unit entries into one object.

Why: a reader of a version with N committed units used to GET N small JSON objects (`_manifest/
<unit>.json`); on S3 that is ~4 s per 1,000 units for every rerun, verify, status, audit and
loader. Compaction (`pipeline.dataset.compaction`) copies the entries into one Parquet file,
`_manifest/_index/<seq>.parquet`, and later deletes the entry files it covers, so readers GET one
index plus the few entries committed since. The per-unit entries stay the commit point: an index
row is only a copy of an entry as it was when the index was written.

This module is the file format only (names, encode, decode with validation); the reading rules
live in `pipeline.dataset.manifest`, the writing rules in `pipeline.dataset.compaction`.

Format (version 1): one row per committed unit, sorted by unit id, columns
- `unit_id` (string), `entry` (the entry as canonical JSON),
- `entry_stamp`: the listing stamp (`entry_stamp`) of the entry file the row was copied from, so a
  reader can tell from a LIST alone that a remaining entry file is that same file (no GET),
- `committed_at`, `attempt_id`: copied from the entry, for people and tools reading the index;
and the schema metadata key `semtok.manifest_index` = {"format", "seq", "units", "base",
"written_at", "run_id"}. Pages carry CRC checksums (verified on read); any problem — unreadable
Parquet, a bad checksum, a wrong row count or seq, a duplicate or damaged row — makes the whole
file damaged (`IndexDamaged`): readers then fall back to an older index plus the entries.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset.layout import MANIFEST_DIR, SAFE_ID, canonical_json
from pipeline.io.storage import source_stamp

__all__ = [
    "INDEX_DIR",
    "INDEX_FORMAT",
    "IndexDamaged",
    "IndexRow",
    "decode_index",
    "encode_index",
    "entry_stamp",
    "index_rel",
    "index_seq",
]

INDEX_DIR = f"{MANIFEST_DIR}/_index"  # relative to the version folder
INDEX_FORMAT = 1
METADATA_KEY = b"semtok.manifest_index"
_NAME = re.compile(r"^(\d{10})\.parquet$")

SCHEMA = pa.schema(
    [
        pa.field("unit_id", pa.string(), nullable=False),
        pa.field("entry", pa.large_string(), nullable=False),
        pa.field("entry_stamp", pa.string(), nullable=False),
        pa.field("committed_at", pa.string()),
        pa.field("attempt_id", pa.string()),
    ]
)


class IndexDamaged(ValueError):
    """An index file that cannot be trusted; the message says why (one line)."""


@dataclass(frozen=True)
class IndexRow:
    """One unit in an index: its entry and the stamp of the entry file it was copied from (entry
    None: a row the reader's `shape` dropped, kept for its stamp)."""

    entry: dict[str, Any] | None
    stamp: str


def index_rel(seq: int) -> str:
    """Relative path of index number `seq` (zero-padded, so names sort like numbers)."""
    if not 0 < seq < 10**10:
        raise ValueError(f"index seq out of range: {seq}")
    return f"{INDEX_DIR}/{seq:010d}.parquet"


def index_seq(name: str) -> int | None:
    """The seq of an index file name (basename or path), None for any other name."""
    found = _NAME.match(name.rsplit("/", 1)[-1])
    return int(found.group(1)) if found else None


def entry_stamp(info: Mapping[str, Any]) -> str:
    """What an entry file looked like in a listing: `source_stamp` (size + ETag on object stores,
    size + mtime locally) plus the inode where the store reports one. A recommit publishes a new
    object (new ETag: the entry holds a fresh attempt id; locally a new inode and mtime), so equal
    stamps mean the very file an index row was copied from."""
    stamp = source_stamp(info)
    if info.get("ino") is not None:
        stamp += f";ino:{info['ino']}"
    return stamp


def encode_index(rows: Mapping[str, IndexRow], *, seq: int, base: int | None, run_id: str = "") -> bytes:
    """The Parquet bytes of index `seq` holding `rows` (unit id → row), sorted by unit id."""
    units = sorted(rows)
    entries: dict[str, dict[str, Any]] = {}
    for unit in units:
        entry = rows[unit].entry
        if entry is None:
            raise ValueError(f"index row {unit!r} has no entry (a shaped read): write whole entries only")
        entries[unit] = entry
    meta = {
        "format": INDEX_FORMAT,
        "seq": seq,
        "units": len(units),
        "base": base,
        "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run_id": run_id,
    }
    table = pa.table(
        {
            "unit_id": units,
            "entry": [canonical_json(entries[u]) for u in units],
            "entry_stamp": [rows[u].stamp for u in units],
            "committed_at": [str(entries[u].get("committed_at") or "") for u in units],
            "attempt_id": [str(entries[u].get("attempt_id") or "") for u in units],
        },
        schema=SCHEMA.with_metadata({METADATA_KEY: json.dumps(meta).encode()}),
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", write_page_checksum=True, row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue()


# Rows decoded at a time: the index's JSON is parsed batch by batch, so reading it never holds
# more than one batch of parsed entries beyond what `shape` keeps (256 entries of 100 files: ~6 MB).
DECODE_BATCH_ROWS = 256
# Rows per Parquet row group: a reader decodes one row group's pages at a time at most.
ROW_GROUP_ROWS = 4096


def decode_index(
    data: bytes,
    *,
    seq: int,
    check_entry: Callable[[Any, str], str | None],
    shape: Callable[[str, dict[str, Any]], dict[str, Any] | None] | None = None,
) -> dict[str, IndexRow]:
    """The rows of index `seq` from its bytes; `IndexDamaged` when anything is off.

    `check_entry(entry, unit_id)` says why an entry cannot be trusted (the manifest's own check).
    `shape(unit_id, entry)`, when given, is what to hold of each good entry (None: hold no entry,
    only the row's stamp), e.g. a planner that keeps a compact copy of the input files instead
    (`CommittedFiles`)."""
    try:
        reader = pq.ParquetFile(io.BytesIO(data), page_checksum_verification=True)
        schema = reader.schema_arrow
    except Exception as error:  # noqa: BLE001 - any reader failure means a damaged file
        raise IndexDamaged(f"not a readable Parquet index: {type(error).__name__}: {error}"[:300]) from None
    raw = (schema.metadata or {}).get(METADATA_KEY)
    try:
        meta = json.loads(raw) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict):
        raise IndexDamaged("no semtok.manifest_index metadata (not an index written by semtok)")
    if meta.get("format") != INDEX_FORMAT:
        raise IndexDamaged(f"index format {meta.get('format')!r}, this semtok reads {INDEX_FORMAT}")
    if meta.get("seq") != seq:
        raise IndexDamaged(f"names seq {meta.get('seq')!r} but is stored as {seq}")
    missing = [name for name in SCHEMA.names[:3] if name not in schema.names]
    if missing:
        raise IndexDamaged(f"lacks column(s) {missing}")
    if reader.metadata.num_rows != meta.get("units"):
        rows_stored = reader.metadata.num_rows
        raise IndexDamaged(f"{rows_stored} rows but its metadata says {meta.get('units')!r} units")
    rows: dict[str, IndexRow] = {}
    seen: set[str] = set()
    # Every column, so a damaged page anywhere (its CRC) damns the file, as the format says.
    batches = reader.iter_batches(batch_size=DECODE_BATCH_ROWS)
    while True:
        try:
            batch = next(batches, None)
        except Exception as error:  # noqa: BLE001 - a bad page (checksum, truncation) mid-file
            why = f"not a readable Parquet index: {type(error).__name__}: {error}"
            raise IndexDamaged(why[:300]) from None
        if batch is None:
            break
        units = batch.column("unit_id").to_pylist()
        entries = batch.column("entry").to_pylist()
        stamps = batch.column("entry_stamp").to_pylist()
        for unit_id, text, stamp in zip(units, entries, stamps, strict=True):
            if not isinstance(unit_id, str) or not SAFE_ID.match(unit_id) or unit_id in seen:
                raise IndexDamaged(f"unit id {unit_id!r} is missing, unsafe or repeated")
            seen.add(unit_id)
            try:
                entry = json.loads(text)
            except (TypeError, json.JSONDecodeError) as error:
                raise IndexDamaged(f"row {unit_id!r}: entry is not JSON: {error}") from None
            problem = check_entry(entry, unit_id)
            if problem:
                raise IndexDamaged(f"row {unit_id!r}: {problem}")
            kept = shape(unit_id, entry) if shape is not None else entry
            rows[unit_id] = IndexRow(entry=kept, stamp=str(stamp or ""))
    if len(seen) != meta.get("units"):
        raise IndexDamaged(f"{len(seen)} rows read but its metadata says {meta.get('units')!r} units")
    return rows
