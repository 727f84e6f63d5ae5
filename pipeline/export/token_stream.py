"""`--to bin`: one flat token stream for Megatron/nanoGPT-style training, plus its document index.

    tokens.bin          every item's flat ids (`TokenLayout.encode`, BOS … EOS), back to back, in
                        plan order (unit, then id); dtype uint16 when the vocabulary fits, else
                        uint32 (little-endian; the index header and vocab.json say which)
    tokens.idx          the document index (format below)
    documents.parquet   one row per document, in stream order: id, start, n_ids, n_frames,
                        duration_s, source_uri, metadata
    vocab.json          `TokenLayout.to_json()`: vocabulary size, id ranges, special ids, order

tokens.idx, little-endian (written by hand: it is a dozen bytes of header and one numpy array;
Megatron's own .idx also stores per-sequence modes and pointers in bytes, which no reader here
needs):

    bytes 0-7     magic b"SEMTKIDX"
    bytes 8-11    uint32 format version (1)
    bytes 12-15   uint32 bytes per token id (2 or 4)
    bytes 16-23   uint64 n_docs
    bytes 24-     int64 offsets[n_docs + 1]: document i is tokens[offsets[i]:offsets[i + 1]]
                  (in ids, not bytes); offsets[0] = 0, offsets[-1] = len(tokens)

    offsets = np.memmap("tokens.idx", dtype="<i8", mode="r", offset=24)
    tokens = np.memmap("tokens.bin", dtype="<u2", mode="r")     # "<u4" when 4 bytes per id

Resumability: each unit becomes a part under the state folder (`_semtok_export/data/`, its ids
and its documents table) committed by its part record; once every part is committed, `finish`
concatenates them in plan order into tokens.bin (streamed, published whole), writes the index,
the documents table and vocab.json, and only then is the export's index written. A kill during
the concatenation leaves no index, so the rerun concatenates again. Parts are deleted after.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset.parquet_writer import parquet_bytes
from pipeline.export.base import ExportPlan, FinishOutput, PartOutput, UnitRows, iter_items
from pipeline.export.state import ExportError, ExportState, PartFile
from pipeline.training.token_layout import Order, TokenLayout

IDX_MAGIC = b"SEMTKIDX"
IDX_VERSION = 1
IDX_HEADER = struct.Struct("<8sIIQ")  # magic, version, bytes per id, n_docs
TOKENS = "tokens.bin"
INDEX = "tokens.idx"
DOCUMENTS = "documents.parquet"
VOCAB = "vocab.json"
PARTS_DATA = "data"

DOCUMENTS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("start", pa.int64(), nullable=False),
        pa.field("n_ids", pa.int64(), nullable=False),
        pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("metadata", pa.string(), nullable=False),
    ]
)


def index_bytes(offsets: np.ndarray, itemsize: int) -> bytes:
    """tokens.idx for document offsets (n_docs + 1 values, in ids)."""
    offsets = np.ascontiguousarray(offsets, dtype="<i8")
    return IDX_HEADER.pack(IDX_MAGIC, IDX_VERSION, itemsize, len(offsets) - 1) + offsets.tobytes()


def read_index(data: bytes) -> tuple[int, np.ndarray]:
    """(bytes per id, offsets) of a tokens.idx; ValueError for anything else."""
    if len(data) < IDX_HEADER.size:
        raise ValueError("tokens.idx is shorter than its header")
    magic, version, itemsize, n_docs = IDX_HEADER.unpack_from(data)
    if magic != IDX_MAGIC or version != IDX_VERSION or itemsize not in (2, 4):
        raise ValueError(f"not a semtok tokens.idx v{IDX_VERSION} (magic {magic!r}, version {version})")
    offsets = np.frombuffer(data, dtype="<i8", offset=IDX_HEADER.size)
    if len(offsets) != n_docs + 1:
        raise ValueError(f"tokens.idx holds {len(offsets)} offsets for {n_docs} documents")
    return int(itemsize), offsets


class TokenStreamFormat:
    """A flat id stream + document index + vocabulary."""

    name: ClassVar[str] = "bin"
    state_dir: ClassVar[str] = "_semtok_export"

    def __init__(self, fingerprint: dict[str, Any], *, order: Order = "interleaved") -> None:
        self.layout = TokenLayout.for_fingerprint(fingerprint, order=order)
        self.dtype = self.layout.dtype.newbyteorder("<")

    def options(self) -> dict[str, Any]:
        return {
            "order": self.layout.order,
            "add_bos_eos": True,
            "dtype": self.layout.dtype.name,
            "vocab_size": self.layout.vocab_size,
        }

    def _part_rels(self, index: int) -> tuple[str, str]:
        base = f"{self.state_dir}/{PARTS_DATA}/{index:06d}"
        return f"{base}.bin", f"{base}.documents.parquet"

    def write_part(self, rows: UnitRows) -> PartOutput:
        chunks, ids, n_ids, n_frames, durations, uris, metadata = [], [], [], [], [], [], []
        for item in iter_items(rows.table):
            flat = self.layout.encode(item.semantic, item.acoustic, add_bos_eos=True)
            chunks.append(flat.astype(self.dtype, copy=False))
            ids.append(item.id)
            n_ids.append(len(flat))
            n_frames.append(item.n_frames)
            durations.append(item.duration_s)
            uris.append(item.source_uri)
            metadata.append(item.metadata)
        data = np.concatenate(chunks).tobytes() if chunks else b""
        docs = pa.Table.from_arrays(
            [
                pa.array(ids, pa.string()),
                pa.array(np.zeros(len(ids), dtype=np.int64)),  # stream starts: set by finish
                pa.array(n_ids, pa.int64()),
                pa.array(n_frames, pa.int32()),
                pa.array(durations, pa.float64()),
                pa.array(uris, pa.string()),
                pa.array(metadata, pa.string()),
            ],
            schema=DOCUMENTS_SCHEMA,
        )
        bin_rel, docs_rel = self._part_rels(rows.unit.index)
        return PartOutput(
            files=[PartFile(bin_rel, data), PartFile(docs_rel, parquet_bytes(docs))],
            info={"n_ids": int(sum(n_ids)), "n_frames": int(sum(n_frames))},
        )

    def _part_bytes(self, state: ExportState, record: dict[str, Any]) -> Iterator[bytes]:
        for file in record["files"]:
            if file["path"].endswith(".bin"):
                data = state.read(file["path"])
                if hashlib.sha256(data).hexdigest() != file["sha256"]:
                    raise ExportError(f"{file['path']} does not match its part record: rerun the export")
                yield data

    def finish(self, state: ExportState, plan: ExportPlan, parts: list[dict[str, Any]]) -> FinishOutput:
        tables = []
        for record in parts:
            docs = [f for f in record["files"] if f["path"].endswith(".documents.parquet")]
            raw = state.read(docs[0]["path"])
            tables.append(pq.read_table(io.BytesIO(raw)))
        documents = pa.concat_tables(tables) if tables else DOCUMENTS_SCHEMA.empty_table()
        lengths = documents.column("n_ids").to_numpy()
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        documents = documents.set_column(1, "start", pa.array(offsets[:-1], pa.int64()))

        def stream() -> Iterator[bytes]:
            for record in parts:
                yield from self._part_bytes(state, record)

        tokens = state.publish_stream(TOKENS, stream())
        expected = int(offsets[-1]) * self.dtype.itemsize
        if tokens["bytes"] != expected:
            raise ExportError(f"{TOKENS} holds {tokens['bytes']} bytes, the parts' documents say {expected}")
        files = [
            tokens,
            state.publish(INDEX, index_bytes(offsets, self.dtype.itemsize)),
            state.publish(DOCUMENTS, parquet_bytes(documents)),
            state.publish(VOCAB, self.layout.to_json().encode("utf-8")),
        ]
        return FinishOutput(
            files=files,
            info={
                "n_docs": len(lengths),
                "n_ids": int(offsets[-1]),
                "dtype": self.dtype.str,
                "vocab": self.layout.to_dict(),
                "idx_format": (
                    f"{IDX_MAGIC!r} magic, uint32 version {IDX_VERSION}, uint32 bytes per id, uint64 n_docs, "
                    "then int64 offsets[n_docs + 1] in ids (little-endian; header 24 bytes)"
                ),
                "load": 'np.memmap("tokens.bin", dtype=dtype, mode="r"); '
                'np.memmap("tokens.idx", dtype="<i8", mode="r", offset=24)',
            },
        )

    def cleanup(self, state: ExportState, plan: ExportPlan, parts: list[dict[str, Any]]) -> None:
        """The parts double the stream's size; once the index is written they are scratch."""
        state.remove(f"{self.state_dir}/{PARTS_DATA}", recursive=True)
