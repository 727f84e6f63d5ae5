"""`semtok status` after real tiny runs: one run per record, timestamps, totals from the manifest."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from jobs.cli import main
from pipeline.config import TokenizeConfig
from pipeline.ops.status import RunStatus, output_status
from pipeline.tokenize.job import run_tokenize
from tests.corpus import speech_like, wav_bytes
from tests.helpers import TINY_CODEC

TINY = {**TINY_CODEC, "files_per_unit": 2, "progress_interval_s": 60}


@pytest.fixture(scope="module")
def two_runs(ray_local, tmp_path_factory):
    """A run over 3 clips + 1 broken file, then a rerun that finds everything committed."""
    src = tmp_path_factory.mktemp("status-in")
    for i in range(3):
        (src / f"clip{i}.wav").write_bytes(wav_bytes(speech_like(1.0 + i, 16000, seed=i), 16000))
    (src / "broken.wav").write_bytes(b"not audio at all" * 10)
    config = TokenizeConfig(input=str(src), output=str(tmp_path_factory.mktemp("status-out")), **TINY)
    return config, run_tokenize(config), run_tokenize(config)


def test_status_lists_runs_and_manifest_totals(two_runs) -> None:
    config, first, second = two_runs
    status = output_status(config.output)
    assert len(status.versions) == 1
    version = status.versions[0]
    assert version.version == first.output.rsplit("/", 1)[-1]
    assert (version.units_committed, version.items, version.items_ok, version.items_failed) == (2, 4, 3, 1)
    assert version.audio_hours == pytest.approx(first.audio_hours)
    assert version.token_frames > 0 and version.last_committed_at
    assert [r.run_id for r in version.runs] == [first.run_id, second.run_id]
    run, rerun = version.runs
    assert run.kind == "tokenize" and (run.items, run.items_ok, run.items_failed) == (4, 3, 1)
    assert run.errors_by_reason == {"undecodable": 1} and run.device == "cpu"
    assert run.real_time_factor == pytest.approx(first.real_time_factor)
    start, end = dt.datetime.fromisoformat(run.started_at), dt.datetime.fromisoformat(run.finished_at)
    assert start <= end and (end - start).total_seconds() == pytest.approx(run.wall_seconds, abs=2)
    assert rerun.items == 0 and rerun.units_skipped == 2 and rerun.units_committed == 0


def test_status_cli_text_and_json(two_runs, capsys) -> None:
    config, first, _ = two_runs
    assert main(["status", config.output]) == 0
    text = capsys.readouterr().out
    assert first.run_id in text and "undecodable: 1" in text and "x real time" in text
    version = first.output.rsplit("/", 1)[-1]
    assert main(["status", config.output, "--version", version, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["versions"][0]["items"] == 4 and len(data["versions"][0]["runs"]) == 2
    assert main(["status", config.output, "--version", "nope"]) == 2  # not found: a clear error


def test_old_records_without_timestamps_get_them_from_the_run_id(tmp_path: Path) -> None:
    run = RunStatus.from_record(
        "20260101T120000Z-abcd1234", {"kind": "tokenize", "wall_seconds": 90.0, "audio_seconds": 180.0}
    )
    assert run.started_at == "2026-01-01T12:00:00+00:00"
    assert run.finished_at == "2026-01-01T12:01:30+00:00"
    assert run.real_time_factor == pytest.approx(2.0)


def test_status_lists_damaged_entries_and_records_and_the_live_writer(tmp_path: Path) -> None:
    import fsspec
    import numpy as np

    from pipeline.dataset.commit import commit_unit
    from pipeline.dataset.layout import OutputLayout
    from pipeline.dataset.lease import acquire_lease
    from pipeline.dataset.run_records import write_run_record

    fp = {"codec": "semanticodec", "token_rate": 50, "semantic_vocab_size": 16384, "test": "status"}
    fs = fsspec.filesystem("file")
    out = str(tmp_path / "out")
    layout = OutputLayout.for_fingerprint(out, fp)
    row = {
        "id": "a",
        "semantic_tokens": np.arange(3),
        "acoustic_tokens": np.arange(3),
        "n_frames": 3,
        "duration_s": 0.06,
        "source_uri": "file:///a",
        "metadata": {},
    }
    for unit in ("u1", "u2"):
        commit_unit(fs, layout, unit, token_rows=[{**row, "id": unit}], fingerprint=fp)
    Path(layout.manifest_path("u2")).write_text("{trunc")
    write_run_record(fs, layout, "20260101T120000Z-aaaaaaaa", {"kind": "tokenize", "wall_seconds": 1.0})
    Path(layout.run_path("20260101T130000Z-bbbbbbbb")).write_text('{"kind": ')
    Path(layout.run_path("20260101T140000Z-cccccccc")).write_text('{"kind": "tokenize", "wall_seconds": "x"}')
    with acquire_lease(fs, layout, "20260101T150000Z-dddddddd", heartbeat=False):
        status = output_status(out)
    version = status.versions[0]
    assert (version.units_committed, version.items) == (1, 1)
    assert list(version.damaged_entries) == ["_manifest/u2.json"]
    assert sorted(version.damaged_runs) == [
        "runs/20260101T130000Z-bbbbbbbb.json",
        "runs/20260101T140000Z-cccccccc.json",
    ]
    assert [r.run_id for r in version.runs] == ["20260101T120000Z-aaaaaaaa"]
    assert version.writer and "20260101T150000Z-dddddddd" in version.writer
    text = status.text()
    assert "damaged manifest entries" in text and "_manifest/u2.json" in text
    assert "damaged run records" in text and "being written now by run 20260101T150000Z-dddddddd" in text
