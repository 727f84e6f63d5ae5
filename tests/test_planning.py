"""`semtok plan`: its counts and hours must be what a real run then does, on local folders and S3.

The plan reads headers only, so it cannot see samples that decode to NaN: the corpus has one such
0.5 s file, which is why "decodable" hours are compared to the run's within 0.5 % (with a 200 s file
in the corpus) rather than exactly. Per item, header lengths must equal decoded lengths exactly
for lossless formats (the soxr length rule) and within the corpus tolerance for lossy ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobs.cli import main
from pipeline.config import TokenizeConfig
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.manifest import read_manifest
from pipeline.io.audio_decoding import AudioDecodeError, decode_audio
from pipeline.io.storage import open_filesystem
from pipeline.ops.estimate import DEFAULT_X_REAL_TIME, PlanReport, plan_job, probe_header
from pipeline.tokenize.job import RunSummary, run_tokenize
from tests.conftest import local_writer, s3_writer
from tests.corpus import (
    CorpusSpec,
    build_corpus,
    build_manifest,
    build_parquet_files,
    build_tar_shards,
    speech_like,
    wav_bytes,
)
from tests.helpers import TINY_CODEC, TINY_FLAGS

TINY = {**TINY_CODEC, "files_per_unit": 4, "progress_interval_s": 60}
LONG_SECONDS = 200


@dataclass
class Planned:
    spec: CorpusSpec
    config: TokenizeConfig
    before: PlanReport
    summary: RunSummary
    after: PlanReport


@pytest.fixture(scope="module")
def planned(request, ray_local, tmp_path_factory):
    """Per place: build the corpus, plan, run the tiny codec, plan again (shared by the tests)."""
    done: dict[str, Planned] = {}

    def get(place: str) -> Planned:
        if place not in done:
            if place == "local":
                root = tmp_path_factory.mktemp("plan-in")
                spec = build_corpus(local_writer(root), long_seconds=LONG_SECONDS)
                config = TokenizeConfig(
                    input=str(root), output=str(tmp_path_factory.mktemp("plan-out")), **TINY
                )
            else:
                server = request.getfixturevalue("s3_server")
                bucket = server.make_bucket("semtok-plan")
                spec = build_corpus(s3_writer(server.filesystem(), f"{bucket}/in"), long_seconds=LONG_SECONDS)
                config = TokenizeConfig(
                    input=f"{bucket}/in",
                    output=f"{bucket}/out",
                    storage_options=server.storage_options,
                    **TINY,
                )
            before = plan_job(config)
            summary = run_tokenize(config)
            done[place] = Planned(spec, config, before, summary, plan_job(config))
        return done[place]

    return get


@pytest.mark.parametrize("place", ["local", "s3"])
def test_plan_counts_what_the_run_then_does(planned, place: str) -> None:
    p = planned(place)
    assert p.before.items == p.summary.items == len(p.spec.items)
    assert p.before.units_remaining == p.summary.units_planned > 1
    assert p.before.units_committed == 0 and p.before.version == p.summary.output.rsplit("/", 1)[-1]
    # header-readable items: every tokenized one, plus the NaN file the header cannot tell
    assert p.before.items_decodable == p.summary.items_ok + 1
    broken = [i for i in p.spec.items if i.expected != "ok"]
    assert (
        p.before.items_unknown_duration + p.before.items_empty + p.before.items_decodable - p.summary.items_ok
    ) == len(broken)
    run_seconds = p.summary.audio_seconds
    assert abs(p.before.audio_hours * 3600 - run_seconds) <= 0.005 * run_seconds, (
        p.before.audio_hours * 3600,
        run_seconds,
    )
    # frames: the codec's own arithmetic on header lengths vs the committed n_frames
    fs, _ = open_filesystem(p.config.output, p.config.storage_options)
    manifest = read_manifest(fs, OutputLayout(p.config.output, p.before.version))
    frames = sum(e["n_frames"] for e in manifest.values())
    assert abs(p.before.token_frames - frames) <= 0.01 * frames, (p.before.token_frames, frames)
    # estimates are present and consistent
    assert p.before.output_bytes_estimate >= 4 * p.before.token_frames
    assert p.before.encoder_hours == pytest.approx(p.before.audio_hours / DEFAULT_X_REAL_TIME)


@pytest.mark.parametrize("place", ["local", "s3"])
def test_plan_after_the_run_has_nothing_left(planned, place: str) -> None:
    p = planned(place)
    after = p.after
    assert after.units_remaining == 0 and after.items == 0 and after.audio_hours == 0
    assert after.units_committed == p.summary.units_committed == p.before.units_remaining
    assert after.items_committed == p.summary.items
    assert after.audio_hours_committed == pytest.approx(p.summary.audio_hours, rel=1e-9)


def test_plan_cli_json_and_text(planned, capsys) -> None:
    p = planned("local")
    args = [
        "plan",
        p.config.input,
        "--out",
        p.config.output,
        *TINY_FLAGS,
        "--files-per-unit",
        "4",
    ]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["units_remaining"] == 0 and report["units_committed"] == p.summary.units_committed
    # without --out: everything is to do; text mode labels its estimates and the throughput figure
    assert (
        main(
            [
                "plan",
                p.config.input,
                "--files-per-unit",
                "4",
                "--encoders",
                "4",
                "--x-real-time-per-encoder",
                "50",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert f"to do: {p.before.units_remaining} units, {p.before.items} items" in text
    assert "estimate" in text and "50x real time per encoder" in text and "on 4 encoders" in text
    assert main(["plan", p.config.input, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["x_real_time_per_encoder"] == DEFAULT_X_REAL_TIME


def test_header_lengths_equal_decoded_lengths(tmp_path: Path) -> None:
    spec = build_corpus(local_writer(tmp_path), long_seconds=3)
    for item in spec.items:
        data = (tmp_path / item.item_id).read_bytes()
        header = probe_header(data, item.item_id)
        try:
            decoded = len(decode_audio(data, name_hint=item.item_id).samples)
        except AudioDecodeError as error:
            assert error.reason == item.expected
            assert not header.known or header.frames == 0 or item.expected == "non_finite", item.item_id
            continue
        assert header.known, (item.item_id, header.problem)
        slack = round(item.tolerance_s * 16000)
        assert abs(header.samples_16k() - decoded) <= slack, (item.item_id, header, decoded)
        if slack == 0:  # both resamplers' lengths, exactly
            soxr = len(decode_audio(data, name_hint=item.item_id, resampler="soxr-hq").samples)
            assert header.samples_16k("soxr-hq") == soxr, item.item_id
    # Lengths that do not divide: official is ceil(N·16000/rate), soxr rounds half up.
    odd = probe_header(wav_bytes(speech_like(1.0, 44100)[:44101], 44100), "odd.wav")
    assert odd.samples_16k() == len(decode_audio(wav_bytes(speech_like(1.0, 44100)[:44101], 44100)).samples)


@pytest.mark.parametrize("kind", ["tars", "parquet", "manifest_jsonl", "manifest_csv"])
def test_plan_counts_items_of_every_input_kind(tmp_path: Path, kind: str) -> None:
    if kind == "tars":
        spec, url = build_tar_shards(local_writer(tmp_path)), str(tmp_path)
    elif kind == "parquet":
        spec, url = build_parquet_files(local_writer(tmp_path)), str(tmp_path)
    else:
        jsonl, csv_spec = build_manifest(local_writer(tmp_path))
        spec, url = (
            (jsonl, str(tmp_path / "manifest.jsonl"))
            if kind == "manifest_jsonl"
            else (csv_spec, str(tmp_path / "manifest.csv"))
        )
    report = plan_job(TokenizeConfig(input=url, **TINY))
    assert report.items == len(spec.items)
    ok = [i for i in spec.items if i.expected == "ok"]
    read_errors = [i for i in spec.items if i.stage == "read"]
    assert sum(report.read_errors_by_reason.values()) == len(read_errors)
    assert report.items_decodable == len(ok)
    if all(i.frames for i in ok):  # the tar spec does not record lengths
        expected = sum(i.frames / i.sample_rate for i in ok)
        assert report.source_audio_hours * 3600 == pytest.approx(expected, rel=1e-6)


def test_plan_reads_with_the_runs_read_policy(tmp_path: Path) -> None:
    """An item over the job's `max_item_bytes` is counted as the read error the run will make it,
    not as audio the run would encode."""
    small, big = (
        wav_bytes(speech_like(0.5, 16000, seed=1), 16000),
        wav_bytes(speech_like(3.0, 16000, seed=2), 16000),
    )
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "small.wav").write_bytes(small)
    (tmp_path / "in" / "big.wav").write_bytes(big)
    report = plan_job(TokenizeConfig(input=str(tmp_path / "in"), max_item_bytes=len(small) + 1, **TINY))
    assert report.items == 2 and report.items_decodable == 1
    assert report.read_errors_by_reason == {"too_large": 1}
