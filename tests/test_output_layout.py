"""Names are pure functions of (root, version, unit); publish never shows a partial object."""

from __future__ import annotations

import os

import fsspec
import pytest

from pipeline.dataset.layout import (
    OutputLayout,
    check_safe_id,
    dataset_version,
    fingerprint_digest,
    publish,
)
from tests.helpers import CODEC_FINGERPRINT as FP


def test_dataset_version_is_stable_and_readable():
    version = dataset_version(FP)
    assert version == dataset_version(dict(reversed(list(FP.items()))))
    assert version.startswith("semanticodec-r50-v16384-")
    identity = {k: v for k, v in FP.items() if k not in ("codec_version", "weights")}
    assert version.endswith(fingerprint_digest(identity)[:10])
    check_safe_id(version)


@pytest.mark.parametrize(
    "change", [{"weights_digest": "random:1"}, {"size": "small"}, {"semantic_vocab_size": 8192}]
)
def test_dataset_version_changes_with_any_identity_field(change):
    assert dataset_version({**FP, **change}) != dataset_version(FP)


def test_layout_paths():
    layout = OutputLayout("s3://bucket/out/", "v1")
    assert layout.version_url == "s3://bucket/out/v1"
    assert layout.tokens_path("u-1") == "s3://bucket/out/v1/tokens/part-u-1.parquet"
    assert layout.errors_path("u-1") == "s3://bucket/out/v1/errors/part-u-1.parquet"
    assert layout.wds_path("u.1") == "s3://bucket/out/v1/wds/u.1.tar"
    assert layout.manifest_path("u_1") == "s3://bucket/out/v1/_manifest/u_1.json"
    assert layout.run_path("r1") == "s3://bucket/out/v1/runs/r1.json"
    assert layout.readme_path == "s3://bucket/out/v1/README.md"
    assert layout.tmp_dir("abc") == "s3://bucket/out/v1/_tmp/abc"
    assert OutputLayout.for_fingerprint("/data", FP).version == dataset_version(FP)


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", ".hidden", "a b", "é", "a\x00"])
def test_unsafe_unit_ids_are_refused(bad):
    layout = OutputLayout("/out", "v1")
    with pytest.raises(ValueError):
        layout.tokens_path(bad)
    with pytest.raises(ValueError):
        layout.manifest_path(bad)


def test_unsafe_version_and_relative_paths_are_refused():
    with pytest.raises(ValueError):
        OutputLayout("/out", "../v")
    with pytest.raises(ValueError):
        OutputLayout("/out", "v").path("../escape")


def test_publish_writes_and_overwrites(store):
    fs, root = store
    path = f"{root}/v/tokens/part-a.parquet"
    publish(fs, path, b"first")
    publish(fs, path, b"second")
    assert fs.cat_file(path) == b"second"
    assert fs.ls(f"{root}/v/tokens", detail=False) == [fs._strip_protocol(path)]


def test_publish_local_uses_tmp_dir_and_leaves_nothing(tmp_path):
    fs = fsspec.filesystem("file")
    tmp_dir = tmp_path / "v" / "_tmp" / "attempt"
    publish(fs, str(tmp_path / "v" / "x.json"), b"{}", tmp_dir=str(tmp_dir))
    assert (tmp_path / "v" / "x.json").read_bytes() == b"{}"
    assert list(tmp_dir.iterdir()) == []


def test_publish_local_failure_keeps_old_content(tmp_path, monkeypatch):
    fs = fsspec.filesystem("file")
    target = tmp_path / "x.bin"
    publish(fs, str(target), b"old")

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        publish(fs, str(target), b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def test_version_ignores_provenance_but_not_identity():
    moved = {**FP, "weights": "s3://elsewhere/ckpt", "codec_version": "9.9.9"}
    assert dataset_version(moved) == dataset_version(FP)
    for field, value in (("weights_digest", "11ee"), ("channel_policy", "mean"), ("token_rate", 25)):
        assert dataset_version({**FP, field: value}) != dataset_version(FP)
