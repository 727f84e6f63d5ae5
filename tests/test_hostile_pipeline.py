"""Hostile corpora through the real pipeline (real Ray, real SeaweedFS S3, the tiny codec).

Each scenario checks the promise end to end: the job ends (rc 0, or the documented refusal), every
input item ends exactly once (tokens or an error row with its reason), and `semtok verify --input`
agrees. Classes covered: special files and links, garbage that decodes, a decoded-size bomb, ids
that sanitizing or suffixes would merge, the output inside the input, changed inputs, a rerun that
adds a format, a second writer on the same output, a second input root, a bucket manifest that
points at local files, other schemes and unreachable hosts, and secrets in URIs.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError, TokenizeConfig
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.lease import OutputBusy, acquire_lease
from pipeline.dataset.manifest import load_errors, load_tokens, read_manifest
from pipeline.io.storage import open_filesystem
from pipeline.ops.verify import verify
from pipeline.tokenize.fingerprint import job_fingerprint
from pipeline.tokenize.job import run_tokenize
from tests.corpus import encode_sf, speech_like, wav_bytes
from tests.helpers import TINY


def _clip(seconds: float = 0.3, sr: int = 16000, seed: int = 0) -> bytes:
    return wav_bytes(speech_like(seconds, sr, seed=seed), sr)


def _huge_claim_wav() -> bytes:
    """A WAV header claiming ~4 GB of 8-channel 384 kHz float audio over a few real bytes."""
    channels, rate, bits = 8, 384000, 32
    data_size = 0xFFFFFF00
    header = b"RIFF" + struct.pack("<I", 36 + data_size) + b"WAVE"
    header += b"fmt " + struct.pack(
        "<IHHIIHH", 16, 3, channels, rate, rate * channels * 4, channels * 4, bits
    )
    return header + b"data" + struct.pack("<I", data_size) + b"\0" * 4096


def _outcomes(config: TokenizeConfig) -> dict[str, str]:
    fs, _ = open_filesystem(config.output, config.storage_options)
    layout = OutputLayout.for_fingerprint(config.output, job_fingerprint(config))
    tokens = load_tokens(fs, layout, columns=["id"]).column("id").to_pylist()
    errors = load_errors(fs, layout).to_pylist()
    ids = tokens + [row["id"] for row in errors]
    assert len(ids) == len(set(ids)), "an item ended twice"
    return {**{i: "ok" for i in tokens}, **{row["id"]: row["reason"] for row in errors}}


def _verify_ok(config: TokenizeConfig) -> None:
    report = verify(
        config.output,
        input=config.input,
        storage_options=config.storage_options,
        input_kind=config.input_kind,
        files_per_unit=config.files_per_unit,
    )
    assert report.ok, report.text()


@pytest.fixture(scope="module")
def hostile_local(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "in"
    outside = root.parent / "outside"
    (root / "dir.wav").mkdir(parents=True)
    outside.mkdir()
    (root / "ok.wav").write_bytes(_clip(seed=1))
    (root / "stereo44k.flac").write_bytes(
        encode_sf(np.stack([speech_like(0.5, 44100, seed=2)] * 2, axis=1), 44100, "FLAC", "PCM_16")
    )
    (root / "Ab.wav").write_bytes(_clip(seed=3))
    (root / "ab.wav").write_bytes(_clip(seed=4))
    (root / "caf\u00e9.wav").write_bytes(_clip(seed=5))
    (root / "cafe\u0301.wav").write_bytes(_clip(seed=6))
    (root / "back\\slash.wav").write_bytes(_clip(seed=7))
    (root / "back_slash.wav").write_bytes(_clip(seed=8))
    (root / "dir.wav" / "inner.wav").write_bytes(_clip(seed=9))
    (root / "huge.wav").write_bytes(_huge_claim_wav())  # libsndfile decodes what is there: 6 samples
    (root / "bomb.flac").write_bytes(  # 30 s of 8-channel 96 kHz silence: ~90 MB decoded, KBs on disk
        encode_sf(np.zeros((96000 * 30, 8), dtype=np.float32), 96000, "FLAC", "PCM_16")
    )
    (root / "loud.wav").write_bytes(wav_bytes(np.full(4000, 1e30, dtype=np.float32), 16000, "FLOAT"))
    (root / "empty.wav").write_bytes(b"")
    os.mkfifo(root / "fifo.wav")
    (root / "zero.wav").symlink_to("/dev/zero")
    (outside / "o.wav").write_bytes(_clip(seed=10))
    (root / "escape.wav").symlink_to(outside / "o.wav")
    (root / "loop.wav").symlink_to(root / "loop.wav")
    return root


EXPECTED_LOCAL = {
    "ok.wav": "ok",
    "stereo44k.flac": "ok",
    "Ab.wav": "ok",
    "ab.wav": "ok",
    "caf\u00e9.wav": "ok",
    "cafe\u0301.wav": "ok",
    "back_slash.wav": "ok",
    "dir.wav/inner.wav": "ok",
    "huge.wav": "ok",
    "bomb.flac": "too_large",
    "loud.wav": "out_of_range",
    "empty.wav": "empty_audio",
    "fifo.wav": "not_a_regular_file",
    "zero.wav": "link_outside_root",
    "escape.wav": "link_outside_root",
    "loop.wav": "broken_link",
}


def test_hostile_local_corpus_every_item_once_and_verify_agrees(ray_local, hostile_local: Path) -> None:
    out = hostile_local / "_tokens"  # the output inside the input: never listed as input
    config = TokenizeConfig(
        input=str(hostile_local),
        output=str(out),
        files_per_unit=4,
        progress_interval_s=60,
        item_timeout_s=60,
        max_decoded_bytes=64 * 2**20,
        **TINY,
    )
    summary = run_tokenize(config)
    outcomes = _outcomes(config)
    backslash = [i for i in outcomes if i.startswith("back/slash.wav~")]
    assert len(backslash) == 1 and outcomes.pop(backslash[0]) == "ok"  # made safe, kept apart
    assert outcomes == EXPECTED_LOCAL
    assert summary.items == len(EXPECTED_LOCAL) + 1
    _verify_ok(config)

    # Rerun: nothing to do. A changed file: its unit is tokenized again, no duplicate, verify agrees.
    assert run_tokenize(config).units_planned == 0
    (hostile_local / "ok.wav").write_bytes(_clip(0.6, seed=11))
    os.utime(hostile_local / "ok.wav", (1e9, 1e9))
    report = verify(config.output, input=config.input, files_per_unit=4)
    assert not report.ok and "ok.wav" in report.text()
    again = run_tokenize(config)
    assert again.units_planned == 1
    fs, _ = open_filesystem(config.output)
    layout = OutputLayout.for_fingerprint(config.output, job_fingerprint(config))
    rows = load_tokens(fs, layout).to_pylist()
    (ok_row,) = [r for r in rows if r["id"] == "ok.wav"]
    assert ok_row["duration_s"] == pytest.approx(0.6)  # the new content, not the first 0.3 s
    _verify_ok(config)

    # A rerun asking for WebDataset too writes the missing twins, never a silent exit 0.
    with_wds = TokenizeConfig(**{**config.to_dict(redact=False), "formats": ("parquet", "webdataset")})
    run_tokenize(with_wds)
    manifest = read_manifest(fs, layout)
    assert all(
        any(f["kind"] == "webdataset" for f in e["files"]) for e in manifest.values() if e["n_tokens_rows"]
    )
    _verify_ok(with_wds)


def test_a_second_writer_is_refused_and_loses_nothing(ray_local, tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(3):
        (root / f"c{i}.wav").write_bytes(_clip(seed=i))
    config = TokenizeConfig(
        input=str(root), output=str(tmp_path / "out"), files_per_unit=2, progress_interval_s=60, **TINY
    )
    fs, _ = open_filesystem(config.output)
    layout = OutputLayout.for_fingerprint(config.output, job_fingerprint(config))
    with acquire_lease(fs, layout, "other-run", command="semtok tokenize (another run)"):
        with pytest.raises(OutputBusy, match="other-run"):
            run_tokenize(config)
    assert read_manifest(fs, layout) == {}
    run_tokenize(config)
    assert set(_outcomes(config)) == {"c0.wav", "c1.wav", "c2.wav"}
    _verify_ok(config)


def test_a_second_input_root_needs_a_namespace(ray_local, tmp_path: Path) -> None:
    for batch in ("b1", "b2"):
        (tmp_path / batch).mkdir()
        (tmp_path / batch / "same.wav").write_bytes(_clip(seed=len(batch)))
    first = TokenizeConfig(
        input=str(tmp_path / "b1"), output=str(tmp_path / "out"), progress_interval_s=60, **TINY
    )
    run_tokenize(first)
    second = TokenizeConfig(**{**first.to_dict(redact=False), "input": str(tmp_path / "b2")})
    with pytest.raises(ConfigError, match="id_prefix"):
        run_tokenize(second)
    run_tokenize(TokenizeConfig(**{**second.to_dict(redact=False), "id_prefix": "b2/"}))
    assert set(_outcomes(first)) == {"same.wav", "b2/same.wav"}


def test_bucket_manifest_may_not_point_at_local_files_and_secrets_never_leak(
    ray_local, s3_server, s3_bucket: str, tmp_path: Path
) -> None:
    fs = s3_server.filesystem()
    base = s3_bucket.removeprefix("s3://")
    fs.pipe_file(f"{base}/in/audio/a.wav", _clip(seed=1))
    local = tmp_path / "local.wav"
    local.write_bytes(_clip(seed=2))
    rows = [
        {"id": "a", "audio": "audio/a.wav"},
        {"id": "local-bare", "audio": str(local)},
        {"id": "local-uri", "audio": local.as_uri()},
        {"id": "climb", "audio": "../../etc/passwd"},
        {"id": "missing", "audio": "audio/missing.wav"},
        {"id": "refused", "audio": "http://user:hunter2@127.0.0.1:9/x.wav?X-Amz-Signature=s3cr3tsig"},
        {"id": "scheme", "audio": "nosuchscheme://x/y.wav"},
        {"id": "a", "audio": "audio/a.wav"},
    ]
    fs.pipe_file(f"{base}/in/manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    config = TokenizeConfig(
        input=f"{s3_bucket}/in/manifest.jsonl",
        output=f"{s3_bucket}/out",
        storage_options=s3_server.storage_options,
        progress_interval_s=60,
        allow_manifest_schemes=("http",),
        **TINY,
    )  # http allowed: see it fail
    run_tokenize(config)
    assert _outcomes(config) == {
        "a": "ok",
        "local-bare": "uri_not_allowed",
        "local-uri": "uri_not_allowed",
        "climb": "uri_not_allowed",
        "missing": "unreadable_object",
        "refused": "unreachable",
        "scheme": "unsupported_scheme",
        "a#dup7": "duplicate_item",
    }
    _verify_ok(config)
    for path in fs.find(f"{base}/out"):
        data = fs.cat_file(path)
        assert b"hunter2" not in data and b"s3cr3tsig" not in data, path


def test_changed_and_deleted_objects_on_s3_are_noticed(ray_local, s3_server, s3_bucket: str) -> None:
    fs = s3_server.filesystem()
    base = s3_bucket.removeprefix("s3://")
    for i in range(3):
        fs.pipe_file(f"{base}/in/c{i}.wav", _clip(seed=i))
    config = TokenizeConfig(
        input=f"{s3_bucket}/in",
        output=f"{s3_bucket}/out",
        files_per_unit=2,
        storage_options=s3_server.storage_options,
        progress_interval_s=60,
        **TINY,
    )
    run_tokenize(config)
    fs.pipe_file(f"{base}/in/c0.wav", _clip(0.6, seed=9))  # same key, new ETag
    fs.rm(f"{base}/in/c2.wav")
    report = verify(config.output, input=config.input, storage_options=config.storage_options)
    assert not report.ok
    (version,) = report.versions
    assert [u.rsplit("/", 1)[-1] for u in version.changed_items] == ["c0.wav"]
    assert [u.rsplit("/", 1)[-1] for u in version.deleted_items] == ["c2.wav"]
    assert run_tokenize(config).units_planned == 1  # c0's unit, again; c2's rows stay
    rows = {r["id"]: r for r in load_tokens(*_fs_layout(config)).to_pylist()}
    assert rows["c0.wav"]["duration_s"] == pytest.approx(0.6) and set(rows) == {"c0.wav", "c1.wav", "c2.wav"}


def _fs_layout(config: TokenizeConfig) -> tuple:
    fs, _ = open_filesystem(config.output, config.storage_options)
    return fs, OutputLayout.for_fingerprint(config.output, job_fingerprint(config))
