"""End to end: real Ray, real S3 (SeaweedFS) and local folders, the tiny codec, all input kinds.

Every input item must end exactly once — in the tokens or in the errors table with the expected
reason — the job must succeed despite the bad files, and a rerun must do no work.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

from codec import build_codec
from pipeline.config import ConfigError, TokenizeConfig
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.manifest import load_errors, load_tokens, read_manifest
from pipeline.io.audio_decoding import decode_audio
from pipeline.io.storage import open_filesystem, read_bytes
from pipeline.tokenize.job import plan_resources, run_tokenize
from tests.conftest import local_writer, s3_writer
from tests.corpus import CorpusSpec, build_tar_shards
from tests.helpers import TINY, TINY_FLAGS, build_every_input_kind

KINDS = ["files", "tars", "parquet", "manifest_jsonl", "manifest_csv"]


@dataclass
class Corpus:
    urls: dict[str, str]
    specs: dict[str, CorpusSpec]
    options: dict
    out: str


def _urls(root: str) -> dict[str, str]:
    return {
        "files": f"{root}/files",
        "tars": f"{root}/tars",
        "parquet": f"{root}/pq",
        "manifest_jsonl": f"{root}/man/manifest.jsonl",
        "manifest_csv": f"{root}/man/manifest.csv",
    }


@pytest.fixture(scope="module")
def local_corpus(tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("tok-in")
    specs = build_every_input_kind(lambda sub: local_writer(root / sub), long_seconds=200)
    return Corpus(_urls(str(root)), specs, {}, str(tmp_path_factory.mktemp("tok-out")))


@pytest.fixture(scope="module")
def s3_corpus(s3_server) -> Corpus:
    bucket = s3_server.make_bucket("semtok-tokenize")
    specs = build_every_input_kind(
        lambda sub: s3_writer(s3_server.filesystem(), f"{bucket}/in/{sub}"), long_seconds=200
    )
    return Corpus(_urls(f"{bucket}/in"), specs, s3_server.storage_options, f"{bucket}/out")


@pytest.fixture(scope="module")
def runs(request, ray_local):
    """Each (place, kind) tokenized once per module; tests share the results."""
    done: dict[tuple[str, str], tuple] = {}

    def get(place: str, kind: str, **extra):
        key = (place, kind)
        if key not in done:
            corpus = request.getfixturevalue(f"{place}_corpus")
            config = TokenizeConfig(
                input=corpus.urls[kind],
                output=f"{corpus.out}/{kind}",
                storage_options=corpus.options,
                files_per_unit=4,
                formats=("parquet", "webdataset"),
                progress_interval_s=60,
                **TINY,
                **extra,
            )
            done[key] = (corpus, config, run_tokenize(config))
        return done[key]

    return get


def _layout(config: TokenizeConfig, summary):
    fs, _ = open_filesystem(config.output, config.storage_options)
    version = summary.output.rstrip("/").rsplit("/", 1)[-1]
    return fs, OutputLayout(config.output, version)


def _assert_accounted(spec: CorpusSpec, tokens, errors) -> None:
    token_ids = tokens.column("id").to_pylist()
    error_rows = errors.to_pylist()
    error_ids = [row["id"] for row in error_rows]
    all_ids = token_ids + error_ids
    assert len(all_ids) == len(set(all_ids)), "an item appears twice"
    expected = spec.by_id()
    assert set(all_ids) == set(expected), set(all_ids) ^ set(expected)
    reasons = {row["id"]: row["reason"] for row in error_rows}
    for item_id, item in expected.items():
        if item.expected == "ok":
            assert item_id in token_ids, (item_id, reasons.get(item_id))
        else:
            assert reasons.get(item_id) == item.expected, (item_id, reasons.get(item_id))
    for lost in spec.lost:
        assert lost not in all_ids


@pytest.mark.parametrize("place", ["local", "s3"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_item_ends_exactly_once(runs, place: str, kind: str) -> None:
    corpus, config, summary = runs(place, kind)
    fs, layout = _layout(config, summary)
    tokens, errors = load_tokens(fs, layout), load_errors(fs, layout)
    _assert_accounted(corpus.specs[kind], tokens, errors)
    assert summary.items == tokens.num_rows + errors.num_rows
    assert summary.items_failed == errors.num_rows
    # the run record and the dataset card sit next to the output
    record = json.loads(fs.cat_file(layout.run_path(summary.run_id)))
    assert record["items"] == summary.items and record["fingerprint"]["random_weights"] is True
    assert "random" in fs.cat_file(layout.readme_path).decode().lower()


def test_tokens_equal_calling_the_codec_directly(runs) -> None:
    corpus, config, summary = runs("local", "files")
    fs, layout = _layout(config, summary)
    tokens = load_tokens(fs, layout).to_pylist()
    codec = build_codec(config.codec_spec(), device="cpu")
    checked = 0
    for row in sorted(tokens, key=lambda r: -r["duration_s"])[:6]:  # the long ones span segments
        audio = decode_audio(read_bytes(row["source_uri"]), name_hint=row["source_uri"])
        direct = codec.encode(torch.from_numpy(audio.samples))[0].numpy()
        np.testing.assert_array_equal(np.asarray(row["semantic_tokens"]), direct[:, 0])
        np.testing.assert_array_equal(np.asarray(row["acoustic_tokens"]), direct[:, 1])
        assert row["n_frames"] == codec.num_tokens(len(audio.samples))
        checked += 1
    assert checked == 6


def test_outputs_load_without_custom_code(runs, tmp_path: Path, monkeypatch) -> None:
    import datasets
    import webdataset

    _, config, summary = runs("local", "tars")
    version_dir = Path(summary.output)
    token_files = sorted(str(p) for p in (version_dir / "tokens").glob("*.parquet"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    loaded = datasets.load_dataset(
        "parquet", data_files=token_files, split="train", cache_dir=str(tmp_path / "hf")
    )
    table = pads.dataset(str(version_dir / "tokens"), format="parquet").to_table()
    assert len(loaded) == table.num_rows > 0
    assert str(table.schema.field("semantic_tokens").type) == "list<element: uint16>"
    first = loaded[0]
    assert len(first["semantic_tokens"]) == first["n_frames"]
    samples = list(
        webdataset.WebDataset(
            sorted(str(p) for p in (version_dir / "wds").glob("*.tar")), shardshuffle=False
        ).decode()
    )
    assert len(samples) == table.num_rows
    by_id = {row["id"]: row for row in table.to_pylist()}
    for sample in samples:
        meta = sample["json"]
        np.testing.assert_array_equal(sample["tokens.npy"][:, 0], by_id[meta["id"]]["semantic_tokens"])
    fingerprint = json.loads(pq.read_schema(token_files[0]).metadata[b"semtok"])
    assert fingerprint["codec"] == "semanticodec" and fingerprint["channel_policy"] == "first"


def _digests(fs, root: str) -> dict[str, str]:
    files = [p for p in fs.find(root) if "/runs/" not in p and not p.endswith("README.md")]
    return {p: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in files}


@pytest.mark.parametrize("place", ["local", "s3"])
def test_rerun_does_no_encode_work_and_changes_nothing(runs, place: str) -> None:
    corpus, config, summary = runs(place, "tars")
    fs, layout = _layout(config, summary)
    before = _digests(fs, layout.version_url)
    again = run_tokenize(config)
    assert again.units_planned == 0 and again.items == 0
    assert again.units_skipped == summary.units_committed > 0
    assert _digests(fs, layout.version_url) == before
    assert len(read_manifest(fs, layout)) == summary.units_committed


def test_another_codec_config_writes_a_separate_version(runs, ray_local) -> None:
    corpus, config, summary = runs("local", "manifest_jsonl")
    other = TokenizeConfig(**{**config.to_dict(redact=False), "token_rate": 25})
    result = run_tokenize(other)
    assert result.output != summary.output and result.items == summary.items
    fs, layout = _layout(other, result)
    assert {len(r["semantic_tokens"]) * 2 <= r["n_frames"] * 2 for r in load_tokens(fs, layout).to_pylist()}


def test_gpu_request_without_gpus_fails_fast_with_a_clear_message() -> None:
    config = TokenizeConfig(input="x", output="y", device="cuda", **TINY)
    with pytest.raises(ConfigError, match="no GPUs"):
        plan_resources(config, {"CPU": 2.0})
    with pytest.raises(ConfigError, match="exceeds"):
        plan_resources(
            TokenizeConfig(input="x", output="y", num_encoders=2, cpus_per_encoder=1, **TINY), {"CPU": 2.0}
        )
    cpu = plan_resources(TokenizeConfig(input="x", output="y", **TINY), {"CPU": 2.0})
    assert (cpu.device, cpu.num_encoders, cpu.cpus_per_encoder) == ("cpu", 1, 1.5)
    big = plan_resources(TokenizeConfig(input="x", output="y", **TINY), {"CPU": 64.0})
    assert big.num_encoders == 8 and big.num_encoders * big.cpus_per_encoder + 0.5 <= 64
    gpu = plan_resources(TokenizeConfig(input="x", output="y", **TINY), {"CPU": 16.0, "GPU": 4.0})
    assert (gpu.device, gpu.num_encoders, gpu.gpus_per_encoder) == ("cuda", 4, 1.0)


def test_cli_reads_s3_through_standard_aws_variables(s3_server, tmp_path: Path) -> None:
    """The command a user types, in a fresh process with its own local Ray."""
    bucket = s3_server.make_bucket("semtok-cli")
    fs = s3_server.filesystem()
    spec = build_tar_shards(s3_writer(fs, f"{bucket}/shards"))
    env = {**os.environ, **s3_server.env, "RAY_ADDRESS": ""}
    command = [
        sys.executable,
        "-m",
        "jobs.cli",
        "tokenize",
        f"{bucket}/shards",
        "--out",
        f"{bucket}/tokens",
        "--codec-size",
        "tiny",
        "--weights",
        "random:1",
        "--token-rate",
        "100",
        "--semantic-vocab-size",
        "4096",
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "audio-hours" in done.stderr and "RANDOM codec weights" in done.stderr
    assert s3_server.secret not in done.stderr + done.stdout
    out_fs = fsspec.filesystem("s3", **s3_server.storage_options)
    version = next(p for p in out_fs.ls(f"{bucket}/tokens") if "semanticodec-r100-v4096" in p)
    layout = OutputLayout(f"{bucket}/tokens", version.rsplit("/", 1)[-1])
    _assert_accounted(spec, load_tokens(out_fs, layout), load_errors(out_fs, layout))


@pytest.mark.slow
def test_full_size_codec_through_the_pipeline(ray_local, tmp_path: Path) -> None:
    """Shapes and cost of the real architecture (random weights) through the real pipeline."""
    from tests.corpus import speech_like, wav_bytes

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.wav").write_bytes(wav_bytes(speech_like(3.0, 16000, seed=1), 16000))
    (tmp_path / "in" / "b.wav").write_bytes(wav_bytes(speech_like(11.0, 22050, seed=2), 22050))
    config = TokenizeConfig(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        weights="random:5",
        token_rate=100,
        semantic_vocab_size=4096,
        codec_size="full",
        progress_interval_s=60,
    )
    summary = run_tokenize(config)
    assert summary.items_ok == 2
    fs, layout = _layout(config, summary)
    codec = build_codec(config.codec_spec(), device="cpu")
    for row in load_tokens(fs, layout).to_pylist():
        audio = decode_audio(read_bytes(row["source_uri"]))
        direct = codec.encode(torch.from_numpy(audio.samples))[0].numpy()
        np.testing.assert_array_equal(np.stack([row["semantic_tokens"], row["acoustic_tokens"]], 1), direct)


def test_readme_demo_commands(ray_local, tmp_path: Path) -> None:
    """The README's first command, in process: demo corpus, then tokenize with the tiny codec."""
    from jobs.cli import main

    assert main(["demo-corpus", str(tmp_path / "demo")]) == 0
    assert (
        main(
            [
                "tokenize",
                str(tmp_path / "demo"),
                "--out",
                str(tmp_path / "tokens"),
                *TINY_FLAGS,
            ]
        )
        == 0
    )
    version = next((tmp_path / "tokens").iterdir())
    tokens = pq.read_table(next((version / "tokens").glob("*.parquet")))
    errors = pq.read_table(next((version / "errors").glob("*.parquet")))
    assert tokens.num_rows == 4 and errors.column("reason").to_pylist() == ["undecodable"]


def test_every_config_field_can_be_set_from_the_command_line(tmp_path: Path) -> None:
    import argparse

    from jobs.cli import tokenize_config

    (tmp_path / "job.yaml").write_text(
        "input: in\noutput: out\nread_cpus: 0.25\nfiles_per_unit: 7\ncodec_size: tiny\nweights: random:0\n"
    )
    args = argparse.Namespace(
        command="tokenize",
        config=str(tmp_path / "job.yaml"),
        verbose=False,
        settings=["read_cpus=1", "storage_options={anon: true}"],
        files_per_unit=11,
        input=None,
        output=None,
    )
    config = tokenize_config(args)
    assert config.read_cpus == 1 and config.storage_options == {"anon": True}
    assert config.files_per_unit == 11  # a named flag and --set both beat the file
    both = argparse.Namespace(**{**vars(args), "settings": ["files_per_unit=9"]})
    with pytest.raises(ConfigError, match="conflicts"):  # never silently dropped
        tokenize_config(both)

    def only_set(setting: str) -> argparse.Namespace:
        return argparse.Namespace(
            command="tokenize", config=None, verbose=False, settings=[setting], input="a", output="b"
        )

    with pytest.raises(ConfigError, match="unknown --set field 'no_such_field'"):
        tokenize_config(only_set("no_such_field=1"))
    with pytest.raises(ConfigError, match="read_cpus"):
        tokenize_config(only_set("read_cpus=-1"))
