"""Token/error Parquet files: exact round trips, one schema everywhere, deterministic bytes."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.dataset.parquet_writer import (
    FINGERPRINT_KEY,
    errors_table,
    parquet_bytes,
    read_fingerprint,
    tokens_schema,
    tokens_table,
    write_table,
)
from tests.helpers import CODEC_FINGERPRINT as FP


def make_rows(n: int, seed: int = 0, prefix: str = "clip") -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        frames = int(rng.integers(0, 40))
        rows.append(
            {
                "id": f"{prefix}/dir {i}/ü.{i}.wav",
                "semantic_tokens": rng.integers(0, 16384, frames, dtype=np.int64),
                "acoustic_tokens": rng.integers(0, 8192, frames, dtype=np.int32),
                "n_frames": frames,
                "duration_s": frames / 25.0 + 0.01,
                "source_uri": f"s3://in/{prefix}.tar",
                "metadata": {"speaker": i, "lang": "en"} if i % 2 else {},
            }
        )
    return rows


def test_round_trip_schema_and_fingerprint(store):
    fs, root = store
    rows = make_rows(7)
    path = f"{root}/tokens/part-a.parquet"
    write_table(fs, path, tokens_table(rows, FP))
    with fs.open(path, "rb") as handle:
        table = pq.read_table(handle)
    assert table.schema.field("semantic_tokens").type == pa.list_(pa.uint16())
    assert table.schema.field("acoustic_tokens").type == pa.list_(pa.uint16())
    assert table.schema.field("n_frames").type == pa.int32()
    assert table.schema.field("metadata").type == pa.string()
    assert read_fingerprint(fs, path) == FP
    by_id = {r["id"]: r for r in rows}
    assert table.column("id").to_pylist() == sorted(by_id)
    for record in table.to_pylist():
        row = by_id[record["id"]]
        assert record["semantic_tokens"] == row["semantic_tokens"].tolist()
        assert record["acoustic_tokens"] == row["acoustic_tokens"].tolist()
        assert record["n_frames"] == row["n_frames"]
        assert record["duration_s"] == row["duration_s"]
        assert json.loads(record["metadata"]) == row["metadata"]


def test_same_rows_give_identical_bytes(store):
    fs, root = store
    rows = make_rows(20, seed=3)
    shuffled = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    first = write_table(fs, f"{root}/a.parquet", tokens_table(rows, FP))
    second = write_table(fs, f"{root}/b.parquet", tokens_table(shuffled, FP))
    assert first == second
    assert fs.cat_file(f"{root}/a.parquet") == fs.cat_file(f"{root}/b.parquet")
    assert parquet_bytes(tokens_table(rows, FP)) == first


def test_metadata_json_is_canonical_and_numpy_safe():
    rows = make_rows(1)
    rows[0]["metadata"] = {"b": np.int64(2), "a": np.array([1.5]), "c": {"z": 1, "y": "é"}}
    text = tokens_table(rows, FP).column("metadata")[0].as_py()
    assert text == '{"a":[1.5],"b":2,"c":{"y":"é","z":1}}'


@pytest.mark.parametrize(
    "change, message",
    [
        ({"semantic_tokens": np.array([16384, 0])}, "semantic_tokens"),
        ({"acoustic_tokens": np.array([0, 8192])}, "acoustic_tokens"),
        ({"semantic_tokens": np.array([-1, 0])}, "semantic_tokens"),
        ({"semantic_tokens": np.array([0.5, 1.0])}, "integers"),
        ({"semantic_tokens": np.array([1, 2, 3])}, "n_frames"),
        ({"acoustic_tokens": np.zeros((2, 1), dtype=np.int64)}, "1-D"),
    ],
)
def test_token_range_violations_raise(change, message):
    row = {
        "id": "x",
        "semantic_tokens": np.array([1, 2]),
        "acoustic_tokens": np.array([3, 4]),
        "n_frames": 2,
        "duration_s": 0.08,
        "source_uri": "u",
        "metadata": {},
    }
    tokens_table([row], FP)
    with pytest.raises(ValueError, match=message):
        tokens_table([{**row, **change}], FP)


def test_uint16_limit_applies_without_fingerprint():
    row = {
        "id": "x",
        "semantic_tokens": np.array([65535]),
        "acoustic_tokens": np.array([65536]),
        "n_frames": 1,
        "duration_s": 0.04,
        "source_uri": "u",
        "metadata": {},
    }
    with pytest.raises(ValueError, match="acoustic_tokens"):
        tokens_table([row])
    assert tokens_table([{**row, "acoustic_tokens": np.array([65535])}]).num_rows == 1


def test_duplicate_and_empty_ids_raise():
    rows = make_rows(2)
    with pytest.raises(ValueError, match="duplicate"):
        tokens_table([rows[0], rows[0]], FP)
    with pytest.raises(ValueError, match="empty"):
        tokens_table([{**rows[0], "id": ""}], FP)


def test_errors_table_schema_and_order():
    rows = [
        {"id": "b", "source_uri": "u", "stage": "decode", "reason": "corrupt", "detail": "x"},
        {"id": "a", "source_uri": "u", "stage": "read", "reason": "missing", "detail": None},
    ]
    table = errors_table(rows)
    assert table.schema.names == ["id", "source_uri", "stage", "reason", "detail"]
    assert all(f.type == pa.string() for f in table.schema)
    assert table.column("id").to_pylist() == ["a", "b"]
    assert table.column("detail").to_pylist() == ["", "x"]
    assert parquet_bytes(table) == parquet_bytes(errors_table(rows[::-1]))


def test_pyarrow_dataset_loads_a_folder(store):
    fs, root = store
    rows_a, rows_b = make_rows(5, seed=1, prefix="a"), make_rows(6, seed=2, prefix="b")
    write_table(fs, f"{root}/tokens/part-a.parquet", tokens_table(rows_a, FP))
    write_table(fs, f"{root}/tokens/part-b.parquet", tokens_table(rows_b, FP))
    write_table(fs, f"{root}/tokens/part-c.parquet", tokens_table([], FP))
    dataset = pads.dataset(fs._strip_protocol(f"{root}/tokens"), format="parquet", filesystem=fs)
    table = dataset.to_table()
    assert table.num_rows == 11
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows_a + rows_b)
    assert json.loads(dataset.schema.metadata[FINGERPRINT_KEY]) == FP


def test_datasets_loads_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from datasets import load_dataset

    fs = fsspec.filesystem("file")
    rows = make_rows(5, seed=1, prefix="a") + make_rows(4, seed=2, prefix="b")
    write_table(fs, str(tmp_path / "tokens/part-a.parquet"), tokens_table(rows[:5], FP))
    write_table(fs, str(tmp_path / "tokens/part-b.parquet"), tokens_table(rows[5:], FP))
    write_table(fs, str(tmp_path / "tokens/part-c.parquet"), tokens_table([], FP))
    loaded = load_dataset(
        "parquet",
        data_files=str(tmp_path / "tokens/*.parquet"),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert loaded.num_rows == 9
    assert loaded.features["semantic_tokens"].feature.dtype == "uint16"
    by_id = {r["id"]: r for r in rows}
    for record in loaded:
        assert record["semantic_tokens"] == by_id[record["id"]]["semantic_tokens"].tolist()
        assert record["acoustic_tokens"] == by_id[record["id"]]["acoustic_tokens"].tolist()


def test_fingerprint_metadata_never_carries_credentials():
    secret = "s3://alice:hunter2@bucket/weights?X-Amz-Signature=abc123&X-Amz-Credential=AKIAXX"
    schema = tokens_schema({**FP, "weights": secret})
    stored = schema.metadata[FINGERPRINT_KEY].decode()
    assert "hunter2" not in stored and "abc123" not in stored and "AKIAXX" not in stored
    assert json.loads(stored)["token_rate"] == FP["token_rate"]
