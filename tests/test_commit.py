"""Exactly once: a unit is visible iff its manifest entry exists, and reruns never duplicate."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import uuid
from concurrent.futures import ThreadPoolExecutor

import fsspec
import pyarrow.dataset as pads
import pytest

from pipeline.dataset.card import render_dataset_card, write_dataset_card
from pipeline.dataset.commit import add_webdataset_twin, cleanup_tmp, commit_unit
from pipeline.dataset.layout import OutputLayout, fingerprint_digest
from pipeline.dataset.manifest import (
    committed_source_uris,
    committed_unit_ids,
    entry_formats,
    entry_problem,
    load_errors,
    load_tokens,
    read_manifest,
    read_manifest_report,
    units_lacking,
)
from pipeline.dataset.run_records import read_run_records, read_run_records_report, write_run_record
from tests.helpers import CODEC_FINGERPRINT as FP
from tests.helpers import random_token_rows


class Crash(Exception):
    """Stands for a worker dying between publishing data and publishing the manifest."""


@pytest.fixture
def layout(store):
    return OutputLayout.for_fingerprint(store[1], FP)


@pytest.fixture
def store_root_2(store):
    """Fresh output roots on the same store (sub-folders of its root)."""
    return lambda fs: f"{store[1]}/root-{uuid.uuid4().hex[:8]}"


def make_rows(n: int, unit: str, seed: int = 0) -> list[dict]:
    ids = [f"{unit}/item {i}.wav" for i in range(n)]
    return random_token_rows(ids, lambda item_id: f"s3://in/{item_id}", seed=seed)


def error_rows(unit: str, n: int) -> list[dict]:
    return [
        {
            "id": f"{unit}/bad {i}.wav",
            "source_uri": f"s3://in/{unit}/bad {i}.wav",
            "stage": "decode",
            "reason": "corrupt",
            "detail": "no header",
        }
        for i in range(n)
    ]


def files_info(unit: str, rows: list[dict]) -> dict:
    return {"kind": "files", "uris": sorted(r["source_uri"] for r in rows)}


def file_bytes(fs, layout, unit_id: str) -> dict[str, bytes]:
    entry = read_manifest(fs, layout)[unit_id]
    return {f["path"]: fs.cat_file(layout.path(f["path"])) for f in entry["files"]}


def test_commit_publishes_files_and_manifest(store, layout):
    fs, _ = store
    rows = make_rows(4, "u1")
    result = commit_unit(
        fs,
        layout,
        "u1",
        token_rows=rows,
        error_rows=error_rows("u1", 2),
        fingerprint=FP,
        formats=("parquet", "webdataset"),
        unit_info=files_info("u1", rows),
        run_id="run-1",
    )
    manifest = read_manifest(fs, layout)
    assert list(manifest) == ["u1"]
    entry = manifest["u1"]
    assert entry == json.loads(fs.cat_file(result.manifest_path))
    assert {f["path"]: f["rows"] for f in entry["files"]} == {
        "tokens/part-u1.parquet": 4,
        "errors/part-u1.parquet": 2,
        "wds/u1.tar": 4,
    }
    for item in entry["files"]:
        data = fs.cat_file(layout.path(item["path"]))
        assert item["bytes"] == len(data)
        assert item["sha256"] == hashlib.sha256(data).hexdigest()
    assert (entry["n_items"], entry["n_tokens_rows"], entry["n_error_rows"]) == (6, 4, 2)
    assert entry["audio_seconds"] == pytest.approx(sum(r["duration_s"] for r in rows))
    assert entry["fingerprint_digest"] == fingerprint_digest(FP)
    assert entry["run_id"] == "run-1"
    assert entry["unit_info"]["kind"] == "files"
    tokens = load_tokens(fs, layout, verify=True)
    assert sorted(tokens.column("id").to_pylist()) == sorted(r["id"] for r in rows)
    by_id = {r["id"]: r for r in rows}
    for record in tokens.to_pylist():
        assert record["semantic_tokens"] == by_id[record["id"]]["semantic_tokens"].tolist()
    assert load_errors(fs, layout).num_rows == 2
    assert committed_unit_ids(fs, layout) == {"u1"}
    assert committed_source_uris(fs, layout) == {r["source_uri"] for r in rows}


def test_errors_file_only_when_there_are_errors(store, layout):
    fs, _ = store
    commit_unit(fs, layout, "u1", token_rows=make_rows(2, "u1"), fingerprint=FP)
    entry = read_manifest(fs, layout)["u1"]
    assert [f["path"] for f in entry["files"]] == ["tokens/part-u1.parquet"]
    assert not fs.exists(layout.errors_path("u1"))
    assert load_errors(fs, layout).num_rows == 0


def test_all_failed_unit_still_has_an_empty_tokens_file(store, layout):
    fs, _ = store
    commit_unit(fs, layout, "u1", token_rows=[], error_rows=error_rows("u1", 3), fingerprint=FP)
    entry = read_manifest(fs, layout)["u1"]
    assert {f["path"]: f["rows"] for f in entry["files"]} == {
        "tokens/part-u1.parquet": 0,
        "errors/part-u1.parquet": 3,
    }
    assert load_tokens(fs, layout).num_rows == 0


def test_crash_before_manifest_leaves_unit_uncommitted_then_recommit_once(store, layout):
    fs, _ = store
    commit_unit(fs, layout, "u0", token_rows=make_rows(2, "u0"), fingerprint=FP)
    rows = make_rows(5, "u1", seed=1)

    def crash() -> None:
        raise Crash

    with pytest.raises(Crash):
        commit_unit(fs, layout, "u1", token_rows=rows, fingerprint=FP, before_manifest=crash)
    assert fs.exists(layout.tokens_path("u1"))  # data was published ...
    assert committed_unit_ids(fs, layout) == {"u0"}  # ... but the unit is not committed
    assert load_tokens(fs, layout).num_rows == 2  # and readers do not see its rows
    leftover = fs.cat_file(layout.tokens_path("u1"))

    commit_unit(fs, layout, "u1", token_rows=rows, fingerprint=FP)
    assert committed_unit_ids(fs, layout) == {"u0", "u1"}
    ids = load_tokens(fs, layout).column("id").to_pylist()
    assert len(ids) == 7 and len(set(ids)) == 7
    assert fs.cat_file(layout.tokens_path("u1")) == leftover


def test_recommit_is_idempotent(store, layout):
    fs, _ = store
    rows = make_rows(6, "u1")
    kwargs = dict(
        token_rows=rows,
        error_rows=error_rows("u1", 1),
        fingerprint=FP,
        formats=("parquet", "webdataset"),
    )
    commit_unit(fs, layout, "u1", **kwargs)
    before = file_bytes(fs, layout, "u1")
    commit_unit(fs, layout, "u1", **{**kwargs, "token_rows": rows[::-1]})
    assert file_bytes(fs, layout, "u1") == before
    assert list(read_manifest(fs, layout)) == ["u1"]
    assert load_tokens(fs, layout).num_rows == 6
    assert len(fs.ls(layout.tokens_dir)) == 1


def test_recommit_removes_files_the_new_attempt_did_not_write(store, layout):
    fs, _ = store
    rows = make_rows(3, "u1")
    commit_unit(
        fs,
        layout,
        "u1",
        token_rows=rows,
        error_rows=error_rows("u1", 1),
        fingerprint=FP,
        formats=("parquet", "webdataset"),
    )
    commit_unit(fs, layout, "u1", token_rows=rows, fingerprint=FP)
    assert not fs.exists(layout.errors_path("u1"))
    assert not fs.exists(layout.wds_path("u1"))
    assert [f["kind"] for f in read_manifest(fs, layout)["u1"]["files"]] == ["tokens"]


def test_fingerprint_must_match_the_version(store):
    fs, root = store
    layout = OutputLayout(root, "some-other-version")
    with pytest.raises(ValueError, match="for_fingerprint"):
        commit_unit(fs, layout, "u1", token_rows=make_rows(1, "u1"), fingerprint=FP)


def test_bad_tokens_commit_nothing(store, layout):
    fs, _ = store
    rows = make_rows(2, "u1")
    rows[1]["semantic_tokens"] = rows[1]["semantic_tokens"] + 16384
    with pytest.raises(ValueError):
        commit_unit(fs, layout, "u1", token_rows=rows, fingerprint=FP)
    assert read_manifest(fs, layout) == {}
    assert not fs.exists(layout.tokens_path("u1"))


def test_empty_output_reads_as_empty(store, layout):
    fs, _ = store
    assert read_manifest(fs, layout) == {}
    assert committed_source_uris(fs, layout) == set()
    table = load_tokens(fs, layout, columns=["id", "n_frames"])
    assert table.num_rows == 0 and table.column_names == ["id", "n_frames"]
    assert cleanup_tmp(fs, layout) == []


def test_only_files_units_give_source_uris(store, layout):
    fs, _ = store
    rows = make_rows(2, "u1")
    commit_unit(fs, layout, "u1", token_rows=rows, fingerprint=FP, unit_info=files_info("u1", rows))
    commit_unit(
        fs,
        layout,
        "shard-0",
        token_rows=make_rows(2, "shard"),
        fingerprint=FP,
        unit_info={"kind": "tar", "uris": ["s3://in/shard-0.tar"]},
    )
    assert committed_source_uris(fs, layout) == {r["source_uri"] for r in rows}


def test_verify_detects_a_changed_file(store, layout):
    fs, _ = store
    commit_unit(fs, layout, "u1", token_rows=make_rows(3, "u1"), fingerprint=FP)
    commit_unit(fs, layout, "u2", token_rows=make_rows(1, "u2", seed=9), fingerprint=FP)
    assert load_tokens(fs, layout, verify=True).num_rows == 4
    fs.pipe_file(layout.tokens_path("u1"), fs.cat_file(layout.tokens_path("u2")))
    with pytest.raises(ValueError, match="sha256"):
        load_tokens(fs, layout, verify=True)


def test_cleanup_tmp_removes_leftovers(store, layout):
    fs, _ = store
    commit_unit(fs, layout, "u1", token_rows=make_rows(1, "u1"), fingerprint=FP)
    leftover = layout.tmp_dir("deadbeef") + "/part-u2.parquet.tmp-1"
    fs.makedirs(layout.tmp_dir("deadbeef"), exist_ok=True)
    fs.pipe_file(leftover, b"partial")
    assert cleanup_tmp(fs, layout, min_age_s=3600) == []
    assert fs.exists(leftover)
    removed = cleanup_tmp(fs, layout)
    assert len(removed) == 1 and not fs.exists(leftover)
    assert committed_unit_ids(fs, layout) == {"u1"}


def test_local_commit_leaves_no_tmp(tmp_path):
    fs = fsspec.filesystem("file")
    layout = OutputLayout.for_fingerprint(str(tmp_path), FP)
    commit_unit(fs, layout, "u1", token_rows=make_rows(2, "u1"), fingerprint=FP)
    assert sorted(os.listdir(tmp_path / layout.version)) == ["_manifest", "_tmp", "tokens"]
    assert os.listdir(tmp_path / layout.version / "_tmp") == []


def test_concurrent_units_all_commit(store, layout):
    fs, _ = store
    units = [f"u{i}" for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda u: commit_unit(fs, layout, u, token_rows=make_rows(3, u, seed=len(u)), fingerprint=FP),
                units,
            )
        )
    assert committed_unit_ids(fs, layout) == set(units)
    assert load_tokens(fs, layout).num_rows == 24


def test_run_records_round_trip(store, layout):
    fs, _ = store
    record = {"run_id": "r1", "counts": {"items": 3}, "config": {"batch": 8}}
    path = write_run_record(fs, layout, "r1", record)
    assert path == layout.run_path("r1")
    assert read_run_records(fs, layout) == {"r1": record}


def test_committed_output_loads_with_pyarrow_and_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from datasets import load_dataset

    fs = fsspec.filesystem("file")
    layout = OutputLayout.for_fingerprint(str(tmp_path / "out"), FP)
    commit_unit(fs, layout, "a", token_rows=make_rows(3, "a"), fingerprint=FP)
    commit_unit(fs, layout, "b", token_rows=[], error_rows=error_rows("b", 1), fingerprint=FP)
    assert pads.dataset(layout.tokens_dir, format="parquet").to_table().num_rows == 3
    loaded = load_dataset(
        "parquet",
        data_files=f"{layout.tokens_dir}/*.parquet",
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert loaded.num_rows == 3


def test_dataset_card(store, layout):
    fs, _ = store
    commit_unit(
        fs,
        layout,
        "u1",
        token_rows=make_rows(3, "u1"),
        error_rows=error_rows("u1", 1),
        fingerprint=FP,
    )
    path = write_dataset_card(fs, layout, FP)
    text = fs.cat_file(path).decode()
    assert "RANDOMLY INITIALISED" in text
    assert layout.version in text
    assert "list<uint16>" in text and "load_dataset" in text and "read_parquet" in text
    assert "| token_rows | 3 |" in text and "| error_rows | 1 |" in text
    real = render_dataset_card({**FP, "weights": "hf:some/repo"}, counts={}, random_weights=False)
    assert "RANDOMLY" not in real
    assert "< 16384" in real and "< 8192" in real


# --- damaged manifest entries -------------------------------------------------------------------


def test_damaged_manifest_entries_are_reported_not_raised(store, layout, caplog):
    fs, _ = store
    for unit in ("u1", "u2", "u3", "u4", "u5"):
        commit_unit(fs, layout, unit, token_rows=make_rows(2, unit), fingerprint=FP)
    good = fs.cat_file(layout.manifest_path("u1"))
    fs.pipe_file(layout.manifest_path("u2"), good[: len(good) // 2])  # truncated
    fs.pipe_file(layout.manifest_path("u3"), good)  # names u1
    entry = json.loads(good)
    entry["unit_id"] = "u4"
    del entry["files"][0]["sha256"]
    fs.pipe_file(layout.manifest_path("u4"), json.dumps(entry).encode())
    fs.pipe_file(layout.manifest_path("u5"), b"[1, 2]")
    found = read_manifest_report(fs, layout)
    assert list(found.entries) == ["u1"]
    assert set(found.damaged) == {f"_manifest/u{i}.json" for i in (2, 3, 4, 5)}
    assert "JSON" in found.damaged["_manifest/u2.json"]
    assert "names unit 'u1'" in found.damaged["_manifest/u3.json"]
    assert "sha256" in found.damaged["_manifest/u4.json"]
    with caplog.at_level("WARNING", logger="pipeline.dataset.commit"):
        assert list(read_manifest(fs, layout)) == ["u1"]  # damaged units count as not committed
    assert "4 damaged manifest entries" in caplog.text
    assert committed_unit_ids(fs, layout) == {"u1"}
    assert load_tokens(fs, layout).num_rows == 2
    # the recommit of a damaged unit overwrites its entry
    commit_unit(fs, layout, "u2", token_rows=make_rows(2, "u2"), fingerprint=FP)
    assert set(read_manifest_report(fs, layout).entries) == {"u1", "u2"}


def test_entry_problem_checks_shape():
    files = [{"path": "tokens/part-u.parquet", "kind": "tokens", "sha256": "ab"}]
    assert entry_problem({"unit_id": "u", "files": files}, "u") is None
    assert "files" in entry_problem({"unit_id": "u"}, "u")
    assert "inside" in entry_problem({"unit_id": "u", "files": [{**files[0], "path": "../x.parquet"}]}, "u")
    assert "unit_info" in entry_problem({"unit_id": "u", "files": files, "unit_info": [1]}, "u")


def test_damaged_run_records_are_skipped(store, layout):
    fs, _ = store
    write_run_record(fs, layout, "r1", {"kind": "tokenize"})
    fs.pipe_file(layout.run_path("r2"), b'{"kind": "tok')
    found = read_run_records_report(fs, layout)
    assert list(found.records) == ["r1"] and list(found.damaged) == ["runs/r2.json"]
    assert list(read_run_records(fs, layout)) == ["r1"]


# --- secrets never reach the output -------------------------------------------------------------

SECRET_URIS = (
    "s3://AKIAEXAMPLEKEY:SECRETVALUE@bucket/x.wav",
    "https://h.example/x.wav?X-Amz-Credential=AKIAEXAMPLEKEY%2F20260101&X-Amz-Signature=abc123sig"
    "&X-Amz-Expires=60",
)
LEAKS = ("SECRETVALUE", "abc123sig", "AKIAEXAMPLEKEY")


def all_bytes(fs, folder: str) -> bytes:
    fs.invalidate_cache()
    return b"".join(fs.cat_file(path) for path in fs.find(folder))


def test_credentials_in_uris_never_reach_written_bytes(store, layout):
    fs, _ = store
    rows = make_rows(2, "u1")
    for row, uri in zip(rows, SECRET_URIS, strict=True):
        row["source_uri"] = uri
    errors = [
        {
            "id": f"bad{i}",
            "source_uri": uri,
            "stage": "read",
            "reason": "unreadable",
            "detail": f"HTTP 403 reading {uri}: X-Amz-Signature=abc123sig rejected",
        }
        for i, uri in enumerate(SECRET_URIS)
    ]
    info = {"kind": "files", "root": "s3://AKIAEXAMPLEKEY:SECRETVALUE@bucket", "uris": list(SECRET_URIS)}
    commit_unit(
        fs,
        layout,
        "u1",
        token_rows=rows,
        error_rows=errors,
        fingerprint=FP,
        formats=("parquet", "webdataset"),
        unit_info=info,
    )
    write_run_record(
        fs,
        layout,
        "r1",
        {
            "config": {
                "input": SECRET_URIS[0],
                "output": SECRET_URIS[1],
                "weights": SECRET_URIS[0],
                "storage_options": {"key": "AKIAEXAMPLEKEY", "secret": "SECRETVALUE"},
            },
            "notes": [SECRET_URIS[1]],
            "token_rate": 50,
        },
    )
    write_dataset_card(fs, layout, {**FP, "weights_url": SECRET_URIS[1]})
    data = all_bytes(fs, layout.version_url)
    assert data  # tokens, errors, tar, manifest, run record, card
    for leak in LEAKS:
        assert leak.encode() not in data, leak
    tokens = load_tokens(fs, layout).column("source_uri").to_pylist()
    assert sorted(tokens) == sorted(
        [
            "s3://***@bucket/x.wav",
            "https://h.example/x.wav?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60",
        ]
    )
    assert read_run_records(fs, layout)["r1"]["token_rate"] == 50


# --- formats and the WebDataset twin ------------------------------------------------------------


def test_entry_records_formats(store, layout):
    fs, _ = store
    commit_unit(fs, layout, "u1", token_rows=make_rows(2, "u1"), fingerprint=FP)
    commit_unit(
        fs, layout, "u2", token_rows=make_rows(2, "u2"), fingerprint=FP, formats=("parquet", "webdataset")
    )
    manifest = read_manifest(fs, layout)
    assert manifest["u1"]["formats"] == ["parquet"]
    assert manifest["u2"]["formats"] == ["parquet", "webdataset"]
    assert units_lacking(manifest, "webdataset") == ["u1"]
    legacy = {k: v for k, v in manifest["u2"].items() if k != "formats"}
    assert entry_formats(legacy) == ["parquet", "webdataset"]


def tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_webdataset_twin_equals_a_tar_written_at_commit(store, store_root_2):
    fs, _ = store
    rows = make_rows(5, "u1", seed=3)
    rows[0]["metadata"] = {"nested": {"a": [1, 2.5, "x"]}, "text": "é"}
    both = OutputLayout.for_fingerprint(store_root_2(fs), FP)
    commit_unit(fs, both, "u1", token_rows=rows, fingerprint=FP, formats=("parquet", "webdataset"))
    only = OutputLayout.for_fingerprint(store_root_2(fs), FP)
    commit_unit(fs, only, "u1", token_rows=rows, fingerprint=FP, unit_info={"kind": "files"})
    entry = read_manifest(fs, only)["u1"]
    new = add_webdataset_twin(fs, only, "u1", entry, FP)
    assert new == read_manifest(fs, only)["u1"]
    assert new["formats"] == ["parquet", "webdataset"]
    twin = fs.cat_file(only.wds_path("u1"))
    reference = fs.cat_file(both.wds_path("u1"))
    assert tar_members(twin) == tar_members(reference)
    assert twin == reference
    record = next(f for f in new["files"] if f["kind"] == "webdataset")
    assert record["sha256"] == hashlib.sha256(twin).hexdigest() and record["rows"] == 5
    assert {f["path"] for f in new["files"]} == {"tokens/part-u1.parquet", "wds/u1.tar"}
    # safe to repeat: nothing changes
    assert add_webdataset_twin(fs, only, "u1", new, FP) == new
    assert read_manifest(fs, only)["u1"] == new
    assert load_tokens(fs, only, verify=True).num_rows == 5


def test_webdataset_twin_of_an_all_failed_unit_writes_no_tar(store, layout):
    fs, _ = store
    commit_unit(fs, layout, "u1", token_rows=[], error_rows=error_rows("u1", 2), fingerprint=FP)
    entry = add_webdataset_twin(fs, layout, "u1", read_manifest(fs, layout)["u1"], FP)
    assert entry["formats"] == ["parquet", "webdataset"]
    assert not fs.exists(layout.wds_path("u1"))
    assert units_lacking(read_manifest(fs, layout), "webdataset") == []
