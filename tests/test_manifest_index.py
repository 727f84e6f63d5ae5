"""The consolidated manifest: compaction changes how the manifest is stored, never what it says.

Reads with and without an index agree; a kill at any step of a compaction loses and duplicates
nothing (reads identical, verify OK, a rerun encodes nothing); a recommit after compaction wins
over the index; a damaged index is a verify finding and readers fall back; outputs written before
the index existed still read, resume and verify; S3 (the SeaweedFS fixture) behaves the same.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import time
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

import pipeline.dataset.compaction as compaction
import pipeline.dataset.manifest_index as manifest_index
import pipeline.tokenize.job as job
from jobs.cli import main
from pipeline.dataset.commit import add_webdataset_twin, commit_unit
from pipeline.dataset.compaction import compact_manifest, compact_output
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.lease import acquire_lease
from pipeline.dataset.manifest import (
    entry_problem,
    load_errors,
    load_tokens,
    read_manifest,
    read_manifest_report,
)
from pipeline.dataset.manifest_index import INDEX_DIR, IndexDamaged, IndexRow, decode_index, encode_index
from pipeline.ops.status import output_status
from pipeline.ops.verify import verify
from tests.helpers import FINGERPRINT


class Kill(Exception):
    """Stands for the process dying at a compaction step."""


def kill_at(step: str):
    def hook(name: str) -> None:
        if name == step:
            raise Kill(step)

    return hook


@pytest.fixture
def output_copy(tokenized_output, tmp_path: Path):
    """A private copy of the shared finished output (never write into the fixture itself)."""
    root = tmp_path / "out"
    shutil.copytree(tokenized_output.root, root)
    version = tokenized_output.version_url.rstrip("/").rsplit("/", 1)[-1]
    config = dataclasses.replace(tokenized_output.config, output=str(root))
    return fsspec.filesystem("file"), OutputLayout(str(root), version), config


def _compact(fs, layout, **kwargs):
    with acquire_lease(fs, layout, f"t{uuid.uuid4().hex[:8]}", heartbeat=False) as lease:
        return compact_manifest(fs, layout, lease=lease, **kwargs)


def _tables(fs, layout):
    return load_tokens(fs, layout, verify=True).to_pylist(), load_errors(fs, layout, verify=True).to_pylist()


def _rerun_encodes_nothing(config) -> None:
    summary = job.run_tokenize(config, stream=io.StringIO())
    assert summary.units_planned == 0 and summary.items == 0 and summary.units_skipped == 5


def test_reads_with_and_without_the_index_agree(output_copy) -> None:
    fs, layout, _ = output_copy
    before = read_manifest_report(fs, layout)
    assert before.index is None and len(before.entries) == 5 and len(before.loose) == 5
    tables = _tables(fs, layout)
    status_before = output_status(layout.root_url).versions[0]

    first = _compact(fs, layout)
    assert (first.seq, first.units, first.folded, first.deleted_entries) == (1, 5, 5, 0)
    once = read_manifest_report(fs, layout)
    assert once.index == f"{INDEX_DIR}/0000000001.parquet" and once.covered == set(before.entries)
    assert once.entries == before.entries and _tables(fs, layout) == tables

    second = _compact(fs, layout)  # now every entry is in two indexes: the files go
    assert (second.seq, second.deleted_entries, second.loose_after) == (2, 5, 0)
    assert not list((Path(layout.manifest_dir)).glob("*.json"))
    twice = read_manifest_report(fs, layout)
    assert twice.entries == before.entries and twice.loose == {} and not twice.damaged_index
    assert _tables(fs, layout) == tables
    report = verify(layout.root_url)
    assert report.ok, report.text()
    assert report.versions[0].manifest_index == f"{INDEX_DIR}/0000000002.parquet"
    status = output_status(layout.root_url).versions[0]
    assert (status.units_committed, status.items, status.items_ok, status.items_failed) == (
        status_before.units_committed,
        status_before.items,
        status_before.items_ok,
        status_before.items_failed,
    )
    assert status.audio_hours == pytest.approx(status_before.audio_hours)
    assert status.manifest_index == twice.index and status.loose_entries == 0


KILLS = [(1, "read"), (1, "index"), (1, "indexes"), (2, "read"), (2, "index"), (2, "entries"), (2, "indexes")]


@pytest.mark.parametrize(("passes", "step"), KILLS)
def test_a_kill_at_any_step_loses_and_duplicates_nothing(
    output_copy, monkeypatch: pytest.MonkeyPatch, passes: int, step: str
) -> None:
    """Killed in the first pass (no base index yet) or the second (it deletes entry files; two per
    batch here, so "entries" is a kill between two deletions)."""
    fs, layout, config = output_copy
    monkeypatch.setattr(compaction, "DELETE_BATCH", 2)
    baseline, tables = read_manifest(fs, layout), _tables(fs, layout)
    for _ in range(passes - 1):
        _compact(fs, layout)
    with pytest.raises(Kill):
        _compact(fs, layout, on_step=kill_at(step))
    found = read_manifest_report(fs, layout)
    assert found.entries == baseline and not found.damaged and not found.damaged_index
    assert _tables(fs, layout) == tables
    report = verify(layout.root_url)
    assert report.ok, report.text()
    _rerun_encodes_nothing(config)
    # whatever was left, `semtok compact` finishes: one index, no entry files, same manifest
    assert main(["compact", layout.root_url]) == 0
    final = read_manifest_report(fs, layout)
    assert final.entries == baseline and final.loose == {} and final.index is not None
    assert len(list(Path(layout.path(INDEX_DIR)).iterdir())) == 2  # the newest and its predecessor
    assert verify(layout.root_url).ok
    _rerun_encodes_nothing(config)


def test_the_end_of_a_run_compacts_once_enough_entries_exist(
    output_copy, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, layout, config = output_copy
    baseline = read_manifest(fs, layout)
    _rerun_encodes_nothing(config)  # 5 entry files < COMPACT_MIN_LOOSE: left alone
    assert read_manifest_report(fs, layout).index is None
    monkeypatch.setattr(job, "COMPACT_MIN_LOOSE", 5)
    out = io.StringIO()
    assert job.run_tokenize(config, stream=out).items == 0
    assert "manifest compacted" in out.getvalue()
    assert read_manifest_report(fs, layout).index is not None
    _rerun_encodes_nothing(config)  # the second pass drops the entry files the first folded
    found = read_manifest_report(fs, layout)
    assert found.loose == {} and found.entries == baseline
    assert verify(layout.root_url).ok


def test_a_damaged_index_is_reported_and_readers_fall_back(output_copy) -> None:
    fs, layout, config = output_copy
    baseline, tables = read_manifest(fs, layout), _tables(fs, layout)
    _compact(fs, layout)
    _compact(fs, layout)  # index 1 and 2 hold everything, no entry files remain
    newest = Path(layout.path(f"{INDEX_DIR}/0000000002.parquet"))
    newest.write_bytes(newest.read_bytes()[:-200])  # truncated, e.g. by an interrupted copy
    found = read_manifest_report(fs, layout)
    assert found.index == f"{INDEX_DIR}/0000000001.parquet" and found.entries == baseline
    assert list(found.damaged_index) == [f"{INDEX_DIR}/0000000002.parquet"]
    assert _tables(fs, layout) == tables
    report = verify(layout.root_url)
    assert not report.ok and report.problems == 1
    assert report.versions[0].damaged_index[0]["path"] == f"{INDEX_DIR}/0000000002.parquet"
    assert "damaged manifest index" in report.text()
    status = output_status(layout.root_url)
    assert list(status.versions[0].damaged_index) == [f"{INDEX_DIR}/0000000002.parquet"]
    assert "damaged manifest index" in status.text()
    _rerun_encodes_nothing(config)
    assert main(["compact", layout.root_url]) == 0  # a new index supersedes the damaged one
    assert not newest.exists() and verify(layout.root_url).ok
    assert read_manifest(fs, layout) == baseline


def test_a_damaged_first_index_falls_back_to_the_entry_files(output_copy) -> None:
    fs, layout, _ = output_copy
    baseline = read_manifest(fs, layout)
    _compact(fs, layout)
    only = Path(layout.path(f"{INDEX_DIR}/0000000001.parquet"))
    only.write_bytes(b"PAR1 not an index")
    found = read_manifest_report(fs, layout)
    assert found.index is None and found.entries == baseline and len(found.damaged_index) == 1
    assert not verify(layout.root_url).ok


def _row(item: str) -> dict:
    return {
        "id": item,
        "semantic_tokens": np.arange(4, dtype=np.uint16),
        "acoustic_tokens": np.arange(4, dtype=np.uint16),
        "n_frames": 4,
        "duration_s": 0.08,
        "source_uri": f"file:///in/{item}",
        "metadata": {},
    }


def _verify_store(store, request) -> bool:
    fs, root = store
    options = request.getfixturevalue("s3_server").storage_options if root.startswith("s3://") else None
    report = verify(root, storage_options=options)
    assert report.ok, report.text()
    return True


def test_a_recommit_after_compaction_wins_over_the_index(store, request) -> None:
    fs, root = store
    layout = OutputLayout.for_fingerprint(root, FINGERPRINT)
    for unit in ("u1", "u2", "u3"):
        commit_unit(fs, layout, unit, token_rows=[_row(f"{unit}-a")], fingerprint=FINGERPRINT)
    _compact(fs, layout)
    _compact(fs, layout)
    assert read_manifest_report(fs, layout).loose == {}
    time.sleep(0.05)  # a new mtime for the local and memory stores (a few clock ticks)
    # a changed input: u2 recommitted with other rows; u3 gets its WebDataset twin
    new = commit_unit(fs, layout, "u2", token_rows=[_row("u2-b"), _row("u2-c")], fingerprint=FINGERPRINT)
    twin = add_webdataset_twin(fs, layout, "u3", read_manifest(fs, layout)["u3"], FINGERPRINT)
    found = read_manifest_report(fs, layout)
    assert found.entries["u2"] == new.entry and found.entries["u3"] == twin
    assert set(found.loose) == {"u2", "u3"} and not found.covered
    ids = load_tokens(fs, layout, verify=True).column("id").to_pylist()
    assert sorted(ids) == ["u1-a", "u2-b", "u2-c", "u3-a"]
    assert _verify_store(store, request)
    # folded into the next index, the recommits still win, and the twin stays listed
    _compact(fs, layout)
    _compact(fs, layout)
    again = read_manifest_report(fs, layout)
    assert again.loose == {} and again.entries == found.entries
    assert "webdataset" in again.entries["u3"]["formats"]
    assert _verify_store(store, request)


def test_s3_kill_between_index_and_deletions(s3_server, s3_bucket) -> None:
    fs = s3_server.filesystem()
    layout = OutputLayout.for_fingerprint(s3_bucket, FINGERPRINT)
    for unit in range(6):
        commit_unit(fs, layout, f"u{unit}", token_rows=[_row(f"i{unit}")], fingerprint=FINGERPRINT)
    baseline = read_manifest(fs, layout)
    _compact(fs, layout)
    with pytest.raises(Kill):
        _compact(fs, layout, on_step=kill_at("index"))
    found = read_manifest_report(fs, layout)
    assert found.entries == baseline and len(found.covered) == 6 and found.index_seqs == [1, 2]
    assert verify(s3_bucket, storage_options=s3_server.storage_options).ok
    done = compact_output(s3_bucket, storage_options=s3_server.storage_options)
    assert done[-1].loose_after == 0 and read_manifest(fs, layout) == baseline
    assert read_manifest_report(fs, layout).loose == {}


def test_an_output_without_index_reads_as_before(tokenized_output) -> None:
    fs = fsspec.filesystem("file")
    version = tokenized_output.version_url.rstrip("/").rsplit("/", 1)[-1]
    found = read_manifest_report(fs, OutputLayout(tokenized_output.root, version))
    assert found.index is None and found.index_seqs == [] and len(found.entries) == len(found.loose) == 5
    assert verify(tokenized_output.root).ok


def test_an_output_without_index_resumes_then_compacts(output_copy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written before the index existed (entry files only), one unit lost: the rerun redoes it,
    folds everything into an index, and the result verifies."""
    fs, layout, config = output_copy
    baseline = read_manifest(fs, layout)
    lost = sorted(baseline)[1]
    Path(layout.manifest_path(lost)).unlink()
    monkeypatch.setattr(job, "COMPACT_MIN_LOOSE", 1)
    summary = job.run_tokenize(config, stream=io.StringIO())
    assert summary.units_planned == 1 and summary.units_committed == 1 and summary.units_skipped == 4
    found = read_manifest_report(fs, layout)
    assert found.index is not None and set(found.entries) == set(baseline)
    assert verify(layout.root_url).ok
    _rerun_encodes_nothing(config)


def test_retry_failed_compacts_at_its_end_like_tokenize(output_copy, monkeypatch: pytest.MonkeyPatch) -> None:
    """retry-failed recommits every retried unit (a new entry file each): it folds them at its end."""
    from pipeline.tokenize.retry import retry_failed

    fs, layout, _ = output_copy
    _compact(fs, layout)
    _compact(fs, layout)
    assert read_manifest_report(fs, layout).loose == {}
    monkeypatch.setattr(job, "COMPACT_MIN_LOOSE", 1)
    stream = io.StringIO()
    [summary] = retry_failed(layout.root_url, version=layout.version, stream=stream)
    assert (summary.items, summary.items_failed, summary.units_committed) == (1, 1, 1)  # still broken
    assert "manifest compacted" in stream.getvalue()
    found = read_manifest_report(fs, layout)
    assert found.index == f"{INDEX_DIR}/0000000003.parquet" and len(found.entries) == 5
    assert len(found.loose) == 1 and found.covered == set(found.loose)  # folded, kept one more pass
    assert verify(layout.root_url).ok


def test_index_format_refuses_damage() -> None:
    entry = {"unit_id": "u1", "files": [{"path": "tokens/part-u1.parquet", "kind": "tokens", "sha256": "ab"}]}
    data = encode_index({"u1": IndexRow(entry, "size:1;etag:x")}, seq=3, base=2)
    rows = decode_index(data, seq=3, check_entry=entry_problem)
    assert rows["u1"].entry == entry and rows["u1"].stamp == "size:1;etag:x"
    with pytest.raises(IndexDamaged, match="seq"):
        decode_index(data, seq=4, check_entry=entry_problem)
    with pytest.raises(IndexDamaged, match="readable"):
        decode_index(data[: len(data) // 2], seq=3, check_entry=entry_problem)
    flipped = bytearray(data)
    flipped[8] ^= 0xFF  # inside the first data page: its CRC no longer matches
    with pytest.raises(IndexDamaged):
        decode_index(bytes(flipped), seq=3, check_entry=entry_problem)
    bad = encode_index({"u1": IndexRow({**entry, "unit_id": "u9"}, "")}, seq=1, base=None)
    with pytest.raises(IndexDamaged, match="u9"):
        decode_index(bad, seq=1, check_entry=entry_problem)


@pytest.mark.parametrize("row_group_rows", [4096, 100])
def test_an_index_decodes_batch_by_batch_whatever_its_row_groups(
    monkeypatch: pytest.MonkeyPatch, row_group_rows: int
) -> None:
    """700 units: one row group as older semtok wrote, or seven; decoded 256 rows at a time either
    way, the same rows; damage in any row group still damns the whole file; `shape` keeps what a
    reader asks for and the stamp of every row."""
    monkeypatch.setattr(manifest_index, "ROW_GROUP_ROWS", row_group_rows)

    def entry(i: int) -> dict:
        rel = f"tokens/part-u{i:04d}.parquet"
        return {"unit_id": f"u{i:04d}", "files": [{"path": rel, "kind": "tokens", "sha256": f"{i:064x}"}]}

    rows = {f"u{i:04d}": IndexRow(entry(i), f"size:{i};etag:x") for i in range(700)}
    data = encode_index(rows, seq=2, base=1)
    assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups == -(-700 // row_group_rows)
    assert decode_index(data, seq=2, check_entry=entry_problem) == rows
    shaped = decode_index(
        data, seq=2, check_entry=entry_problem, shape=lambda u, e: e if u.endswith("7") else None
    )
    assert {u for u, r in shaped.items() if r.entry is not None} == {u for u in rows if u.endswith("7")}
    assert {u: r.stamp for u, r in shaped.items()} == {u: r.stamp for u, r in rows.items()}
    with pytest.raises(ValueError, match="no entry"):
        encode_index(shaped, seq=3, base=2)  # a shaped read is never written back
    # A flipped byte anywhere (every row group, every column) is caught, or lies in a header field
    # that changes nothing read: never different rows in silence.
    caught = 0
    for at in range(0, len(data), len(data) // 60):
        flipped = bytearray(data)
        flipped[at] ^= 0xFF
        try:
            assert decode_index(bytes(flipped), seq=2, check_entry=entry_problem) == rows, at
        except IndexDamaged:
            caught += 1
    assert caught > 30


def test_compact_cli(output_copy, capsys) -> None:
    fs, layout, _ = output_copy
    assert main(["compact", layout.root_url, "--version", layout.version]) == 0
    out = capsys.readouterr().out
    assert "0000000002.parquet" in out and "0 entry files remain" in out
    assert main(["compact", layout.root_url]) == 0
    assert "nothing to compact" in capsys.readouterr().out
    assert main(["compact", layout.root_url, "--version", "nope"]) == 2
    assert "no dataset version 'nope'" in capsys.readouterr().err


def test_compact_writes_a_run_record_that_status_shows(output_copy, monkeypatch, capsys) -> None:
    fs, layout, config = output_copy
    compact_output(layout.root_url)
    compact_output(layout.root_url)  # nothing left: recorded too
    runs = [r for r in output_status(layout.root_url).versions[0].runs if r.kind == "compact"]
    assert [r.status for r in runs] == ["completed", "completed"]
    first, second = sorted(runs, key=lambda r: "nothing" in (r.summary or ""))  # same second: any order
    assert "0000000002.parquet holds 5 units" in first.summary and "0 entry files remain" in first.summary
    assert second.summary == f"{layout.version}: nothing to compact"
    assert first.started_at and first.finished_at and first.wall_seconds >= 0
    record = json.loads(Path(layout.run_path(first.run_id)).read_text())
    assert [p["seq"] for p in record["passes"]] == [1, 2] and "config" not in record

    def broken(*args, **kwargs):
        raise ValueError("disk says no")

    monkeypatch.setattr(compaction, "compact_manifest", broken)
    with pytest.raises(ValueError):
        compact_output(layout.root_url)
    failed = [r for r in output_status(layout.root_url).versions[0].runs if r.status == "failed"]
    assert [(r.kind, r.summary) for r in failed] == [("compact", "nothing done")]
    record = json.loads(Path(layout.run_path(failed[0].run_id)).read_text())
    assert record["error"] == "ValueError: disk says no"
    assert main(["status", layout.root_url]) == 0
    text = capsys.readouterr().out
    assert f"{first.run_id} [compact]" in text and "(failed): nothing done" in text
    # the tokenize run stays the one later commands take their config from
    assert main(["verify", layout.root_url, "--input", config.input]) == 0


def test_a_damaged_entry_file_wins_over_its_index_row(tmp_path: Path) -> None:
    """The entry file is the commit point: a damaged one (written after the index) makes its unit
    not committed even though an index row exists, like a damaged entry always did."""
    fs = fsspec.filesystem("file")
    layout = OutputLayout.for_fingerprint(str(tmp_path / "out"), FINGERPRINT)
    for unit in ("u1", "u2"):
        commit_unit(fs, layout, unit, token_rows=[_row(f"{unit}-a")], fingerprint=FINGERPRINT)
    _compact(fs, layout)
    _compact(fs, layout)
    Path(layout.manifest_path("u2")).write_text('{"unit_id": "u2", "files": [')
    found = read_manifest_report(fs, layout)
    assert list(found.entries) == ["u1"] and list(found.damaged) == ["_manifest/u2.json"]
    assert not verify(str(tmp_path / "out")).ok
