"""The tar twin: read back by plain `webdataset.WebDataset`, safe names, deterministic bytes."""

from __future__ import annotations

import io
import re
import tarfile

import fsspec
import numpy as np
import pytest
import webdataset as wds

from pipeline.dataset.webdataset_writer import item_key, shard_bytes, write_shard
from tests.helpers import CODEC_FINGERPRINT as FP
from tests.helpers import random_token_rows

UNSAFE_IDS = [
    "a.b.c.wav",
    "dir/sub dir/file.flac",
    "../../etc/passwd",
    "/abs/path.wav",
    "日本語の音声.ogg",
    "nul\x00byte",
    "__key__",
    "...",
    "x" * 500,
]


def make_rows(ids: list[str], seed: int = 0) -> list[dict]:
    return random_token_rows(ids, lambda _: "s3://in/shard-0.tar", seed=seed)


@pytest.mark.parametrize("item_id", UNSAFE_IDS)
def test_item_key_is_safe_and_stable(item_id):
    key = item_key(item_id)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", key), key
    assert len(key) <= 80
    assert item_key(item_id) == key


def test_item_keys_are_unique_for_ids_that_sanitize_alike():
    ids = ["a b", "a/b", "a.b", "a_b", "a?b"]
    assert len({item_key(i) for i in ids}) == len(ids)


def test_webdataset_reads_the_shard(tmp_path):
    rows = make_rows(UNSAFE_IDS)
    path = tmp_path / "unit.tar"
    write_shard(fsspec.filesystem("file"), str(path), rows, fingerprint=FP)
    samples = list(wds.WebDataset(str(path), shardshuffle=False).decode())
    assert len(samples) == len(rows)
    by_id = {r["id"]: r for r in rows}
    for sample in samples:
        info = sample["json"]
        row = by_id[info["id"]]
        pairs = sample["tokens.npy"]
        assert pairs.dtype == np.uint16 and pairs.shape == (row["n_frames"], 2)
        np.testing.assert_array_equal(pairs[:, 0], row["semantic_tokens"])
        np.testing.assert_array_equal(pairs[:, 1], row["acoustic_tokens"])
        assert info["n_frames"] == row["n_frames"]
        assert info["metadata"] == row["metadata"]
        assert info["fingerprint"]["semantic_vocab_size"] == 16384
        assert sample["__key__"] == item_key(info["id"])


def test_webdataset_raw_bytes_are_npy(tmp_path):
    rows = make_rows(["one.wav"])
    path = tmp_path / "unit.tar"
    write_shard(fsspec.filesystem("file"), str(path), rows)
    (sample,) = list(wds.WebDataset(str(path), shardshuffle=False))
    pairs = np.load(io.BytesIO(sample["tokens.npy"]))
    np.testing.assert_array_equal(pairs[:, 0], rows[0]["semantic_tokens"])


def test_members_are_safe_and_deterministic(store):
    fs, root = store
    rows = make_rows(UNSAFE_IDS, seed=5)
    data = write_shard(fs, f"{root}/wds/u.tar", rows, fingerprint=FP)
    assert fs.cat_file(f"{root}/wds/u.tar") == data
    assert shard_bytes(rows[::-1], FP) == data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert len(names) == 2 * len(rows)
    assert names == sorted(names)
    for member in members:
        assert not member.name.startswith("/") and ".." not in member.name
        assert "\x00" not in member.name and "/" not in member.name
        assert member.name.count(".") in (1, 2)
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (
            0,
            0,
            0,
            "",
            "",
        )


def test_out_of_range_tokens_raise():
    rows = make_rows(["a"])
    rows[0]["acoustic_tokens"] = np.full(rows[0]["n_frames"], 70000)
    with pytest.raises(ValueError):
        shard_bytes(rows)
