"""Token and error rows as Parquet files that every common reader loads as one dataset.

One fixed schema for every file of a version (metadata is a JSON string column, not a struct that
would differ between inputs), tokens as list<uint16>, and the codec fingerprint in each file's
key-value metadata. Rows are sorted by id and pyarrow writes no timestamps, so the same rows give
byte-identical files: a rerun rewrites a unit without changing it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset.layout import canonical_json, publish
from pipeline.io.storage import redact_text, redact_uri, redact_value

FINGERPRINT_KEY = b"semtok"
UINT16_LIMIT = 1 << 16
# Row groups near this size: small enough to stream, large enough to compress well.
TARGET_ROW_GROUP_BYTES = 64 << 20
MAX_ROW_GROUP_ROWS = 65536

TOKENS_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("semantic_tokens", pa.list_(pa.uint16()), nullable=False),
    pa.field("acoustic_tokens", pa.list_(pa.uint16()), nullable=False),
    pa.field("n_frames", pa.int32(), nullable=False),
    pa.field("duration_s", pa.float64(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("metadata", pa.string(), nullable=False),
]
ERRORS_FIELDS = [
    pa.field(name, pa.string(), nullable=False) for name in ("id", "source_uri", "stage", "reason", "detail")
]
ERRORS_SCHEMA = pa.schema(ERRORS_FIELDS)


def tokens_schema(fingerprint: Mapping[str, Any] | None = None) -> pa.Schema:
    """The token schema, carrying the fingerprint as file metadata when given (redacted: a weights
    URL with credentials must not travel with the tokens)."""
    schema = pa.schema(TOKENS_FIELDS)
    if fingerprint is not None:
        schema = schema.with_metadata({FINGERPRINT_KEY: canonical_json(redact_value(dict(fingerprint)))})
    return schema


def _json_default(value: Any) -> Any:
    """numpy values that slip into metadata become plain JSON."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON-able")


def metadata_json(metadata: Mapping[str, Any] | None) -> str:
    """Carried metadata as one canonical JSON string (same dict → same bytes)."""
    return json.dumps(
        dict(metadata or {}),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=_json_default,
    )


def _check_tokens(item_id: str, name: str, values: Any, n_frames: int, vocab: int | None) -> np.ndarray:
    """Tokens out of range are a bug upstream (wrong codec, overflow), never data to keep."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{item_id!r}: {name} must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{item_id!r}: {name} must be integers, got {array.dtype}")
    if array.shape[0] != n_frames:
        raise ValueError(f"{item_id!r}: {name} has {array.shape[0]} frames, n_frames={n_frames}")
    limit = UINT16_LIMIT if vocab is None else min(int(vocab), UINT16_LIMIT)
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= limit:
            raise ValueError(f"{item_id!r}: {name} values in [{low}, {high}] outside [0, {limit})")
    return array.astype(np.uint16, copy=False)


def _list_array(arrays: list[np.ndarray]) -> pa.Array:
    """list<uint16> from per-row arrays, built from one flat buffer (no per-value Python)."""
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    if len(arrays):
        if int(lengths.sum()) >= 2**31:
            raise ValueError("too many tokens in one table for 32-bit list offsets")
        np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint16)
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(flat.astype(np.uint16, copy=False), pa.uint16())
    )


def _check_unique(ids: list[str], what: str) -> None:
    """Two rows with one id in a unit would be two copies of an item: a bug upstream."""
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen:
            raise ValueError(f"duplicate id in {what}: {item_id!r}")
        seen.add(item_id)


def tokens_table(rows: Iterable[Mapping[str, Any]], fingerprint: Mapping[str, Any] | None = None) -> pa.Table:
    """Validated, id-sorted token table; the fingerprint goes into the schema metadata.

    `source_uri` is written through `redact_uri` (no userinfo, no signed-URL credentials)."""
    fp = dict(fingerprint or {})
    rows = sorted(rows, key=lambda r: r["id"])
    ids = [str(r["id"]) for r in rows]
    _check_unique(ids, "token rows")
    if "" in ids:
        raise ValueError("token row with an empty id")
    semantic, acoustic, n_frames = [], [], []
    for row in rows:
        item_id = row["id"]
        frames = int(row["n_frames"])
        if frames < 0 or frames >= 2**31:
            raise ValueError(f"{item_id!r}: n_frames={frames} out of range")
        semantic.append(
            _check_tokens(
                item_id,
                "semantic_tokens",
                row["semantic_tokens"],
                frames,
                fp.get("semantic_vocab_size"),
            )
        )
        acoustic.append(
            _check_tokens(
                item_id,
                "acoustic_tokens",
                row["acoustic_tokens"],
                frames,
                fp.get("acoustic_vocab_size"),
            )
        )
        n_frames.append(frames)
    columns = [
        pa.array(ids, pa.string()),
        _list_array(semantic),
        _list_array(acoustic),
        pa.array(n_frames, pa.int32()),
        pa.array([float(r["duration_s"]) for r in rows], pa.float64()),
        pa.array([redact_uri(str(r.get("source_uri") or "")) for r in rows], pa.string()),
        pa.array([metadata_json(r.get("metadata")) for r in rows], pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=tokens_schema(fp if fingerprint else None))


def _error_field(row: Mapping[str, Any], name: str) -> str:
    value = str(row.get(name) or "")
    if name == "source_uri":
        return redact_uri(value)
    return redact_text(value) if name == "detail" else value


def errors_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Error rows (all strings), sorted by every column so equal inputs give equal files.

    Credentials never reach the file: `source_uri` goes through `redact_uri` and `detail` (free
    text, often an exception message quoting a URL) through `redact_text`."""
    names = ERRORS_SCHEMA.names
    records = sorted(tuple(_error_field(r, n) for n in names) for r in rows)
    columns = [pa.array([rec[i] for rec in records], pa.string()) for i in range(len(names))]
    return pa.Table.from_arrays(columns, schema=ERRORS_SCHEMA)


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group so that a group holds about TARGET_ROW_GROUP_BYTES (at least 1 row)."""
    if table.num_rows == 0:
        return 1
    per_row = max(1, table.nbytes // table.num_rows)
    return int(max(1, min(MAX_ROW_GROUP_ROWS, TARGET_ROW_GROUP_BYTES // per_row)))


def parquet_bytes(table: pa.Table) -> bytes:
    """The Parquet file of a table: zstd, no timestamps, so deterministic for equal tables.

    An empty table gets a file with no row group at all: pyarrow would otherwise write one
    0-row group, and `datasets` then fails on it ("BatchSize must be greater than 0").
    """
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, compression="zstd", write_statistics=True) as writer:
        if table.num_rows:
            writer.write_table(table, row_group_size=row_group_rows(table))
    return sink.getvalue().to_pybytes()


def write_table(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> bytes:
    """Publish a table as a Parquet file at `path` (atomically); returns the bytes written."""
    data = parquet_bytes(table)
    publish(fs, path, data)
    return data


def read_fingerprint(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """The codec fingerprint stored in a token file's metadata (None when absent)."""
    with fs.open(path, "rb") as handle:
        metadata = pq.read_schema(handle).metadata or {}
    raw = metadata.get(FINGERPRINT_KEY)
    return json.loads(raw) if raw is not None else None
