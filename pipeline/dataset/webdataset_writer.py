"""A WebDataset tar twin of a unit's token rows, readable by `webdataset.WebDataset` as is.

WebDataset groups tar members by key = member name up to the first dot of its basename, so item
ids (which may hold dots, slashes, spaces, unicode) cannot be keys. Each item gets a safe key (a
readable sanitized prefix + a hash of the id) and its real id travels in `<key>.json`. The tar
bytes are deterministic (fixed owner, mtime 0, sorted members) so reruns rewrite identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec
import numpy as np

from pipeline.dataset.layout import dataset_version, publish
from pipeline.dataset.parquet_writer import UINT16_LIMIT, metadata_json
from pipeline.io.storage import redact_uri

KEY_PREFIX_CHARS = 48
KEY_HASH_CHARS = 16
FINGERPRINT_SUMMARY_FIELDS = (
    "codec",
    "codec_version",
    "frame_rate",
    "token_rate",
    "semantic_vocab_size",
    "acoustic_vocab_size",
    "sample_rate",
    "weights_digest",
)


def item_key(item_id: str) -> str:
    """Safe WebDataset key for an item id: [A-Za-z0-9_-] only, unique by a hash of the full id."""
    prefix = re.sub(r"[^A-Za-z0-9_-]+", "_", item_id)
    prefix = prefix.lstrip("_-")[:KEY_PREFIX_CHARS].rstrip("_-")
    digest = hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:KEY_HASH_CHARS]
    return f"{prefix}-{digest}" if prefix else digest


def fingerprint_summary(fingerprint: Mapping[str, Any] | None) -> dict[str, Any]:
    """The fingerprint fields a tar reader needs to interpret tokens, plus the version name."""
    if not fingerprint:
        return {}
    summary = {k: fingerprint[k] for k in FINGERPRINT_SUMMARY_FIELDS if k in fingerprint}
    summary["dataset_version"] = dataset_version(dict(fingerprint))
    return summary


def tokens_npy(semantic: Any, acoustic: Any) -> bytes:
    """uint16 [T, 2] (semantic, acoustic) in .npy format."""
    sem = np.asarray(semantic)
    aco = np.asarray(acoustic)
    if sem.ndim != 1 or sem.shape != aco.shape:
        raise ValueError(f"token streams must be 1-D of equal length, got {sem.shape}, {aco.shape}")
    for stream in (sem, aco):
        if stream.size and (int(stream.min()) < 0 or int(stream.max()) >= UINT16_LIMIT):
            raise ValueError("token values do not fit uint16")
    pairs = np.stack([sem.astype(np.uint16), aco.astype(np.uint16)], axis=1)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(pairs), allow_pickle=False)
    return buffer.getvalue()


def _check_member_name(name: str) -> str:
    """Last line of defence: tar names that could escape an extraction folder are refused."""
    if not name or name.startswith("/") or "\x00" in name or ".." in name.split("/"):
        raise ValueError(f"unsafe tar member name {name!r}")
    return name


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(_check_member_name(name))
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    tar.addfile(info, io.BytesIO(data))


def shard_bytes(rows: Iterable[Mapping[str, Any]], fingerprint: Mapping[str, Any] | None = None) -> bytes:
    """The tar of token rows: per item `<key>.json` then `<key>.tokens.npy`, sorted by key."""
    summary = fingerprint_summary(fingerprint)
    keyed: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        key = item_key(str(row["id"]))
        if key in keyed:
            raise ValueError(f"two rows map to key {key!r}: {keyed[key]['id']!r}, {row['id']!r}")
        keyed[key] = row
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key in sorted(keyed):
            row = keyed[key]
            record = {
                "id": str(row["id"]),
                "source_uri": redact_uri(str(row.get("source_uri") or "")),
                "n_frames": int(row["n_frames"]),
                "duration_s": float(row["duration_s"]),
                "metadata": json.loads(metadata_json(row.get("metadata"))),
                "fingerprint": summary,
            }
            text = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            _add_member(tar, f"{key}.json", text.encode("utf-8"))
            npy = tokens_npy(row["semantic_tokens"], row["acoustic_tokens"])
            _add_member(tar, f"{key}.tokens.npy", npy)
    return buffer.getvalue()


def write_shard(
    fs: fsspec.AbstractFileSystem,
    path: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    fingerprint: Mapping[str, Any] | None = None,
) -> bytes:
    """Publish the tar of `rows` at `path` (atomically); returns the bytes written."""
    data = shard_bytes(rows, fingerprint)
    publish(fs, path, data)
    return data
