"""Big items are copied from storage to a local file in chunks and decoded from it (`pipeline.io.spool`).

The spooled path must give the in-memory path's segments and tokens exactly (local files, tar
members, S3 objects and manifest entries), classify every read failure as a whole read does (a
missing or forbidden object is an error row, an outage fails the unit, a stalled read times out, a
truncated shard is `truncated_tar`), and leave no file behind however the item ends.
"""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline.config import TokenizeConfig
from pipeline.io import spool as spool_module
from pipeline.io.sources import ReadPolicy, plan_units, read_unit
from pipeline.io.spill_files import sweep_spill_dir
from pipeline.io.spool import Spooler
from pipeline.records import InputUnit, SourceItem
from pipeline.tokenize.encode_stage import EncodeActor
from pipeline.tokenize.prepare_stage import ERROR, SEGMENT, PrepareUnit
from tests import poison
from tests.corpus import encode_sf, speech_like, wav_bytes
from tests.helpers import TINY

SPEC = TokenizeConfig(input="x", output="y", **TINY).codec_spec()
THRESHOLD = 64 * 1024  # bytes: the "big" items below are 3-6x this, the small ones under it


def big_flac(seconds: float = 14.0, seed: int = 0) -> bytes:
    data = encode_sf(speech_like(seconds, 44100, seed=seed), 44100, "FLAC", "PCM_16")
    assert len(data) > 3 * THRESHOLD
    return data


def small_wav(seed: int = 1) -> bytes:
    data = wav_bytes(speech_like(1.0, 16000, seed=seed), 16000)
    assert len(data) < THRESHOLD
    return data


@functools.cache
def _encoder() -> EncodeActor:
    return EncodeActor(SPEC)


def tokens_of(rows: list[dict[str, Any]]) -> dict[str, bytes]:
    """Each item's tokens, from the prepare rows, through the encode stage (tiny codec)."""
    segments = [r for r in rows if r["row_kind"] == SEGMENT]
    batch = {
        "row_kind": np.array([r["row_kind"] for r in segments], dtype=object),
        "samples": np.array([r["samples"] for r in segments], dtype=object),
        "valid_frames": np.array([r["valid_frames"] for r in segments], dtype=np.int64),
        "stage": np.array([""] * len(segments), dtype=object),
        "reason": np.array([""] * len(segments), dtype=object),
        "detail": np.array([""] * len(segments), dtype=object),
    }
    tokens = _encoder()(batch)["tokens"]
    out: dict[str, bytes] = {}
    for row, token_bytes in zip(segments, tokens, strict=True):
        out[row["item_id"]] = out.get(row["item_id"], b"") + token_bytes
    return out


def prepare_both(
    row: dict[str, Any], spill: Path, **kwargs: Any
) -> tuple[list[dict], list[dict], PrepareUnit]:
    """The unit's rows read into memory, then with big items spooled (stream off: whole decodes)."""
    whole = list(PrepareUnit(SPEC, spool_min_bytes=None, spill_dir=str(spill), **kwargs)(row))
    spooled = PrepareUnit(SPEC, spool_min_bytes=THRESHOLD, spill_dir=str(spill), **kwargs)
    rows = list(spooled(row))
    return whole, rows, spooled


def files_row(folder: Path, names: list[str]) -> dict[str, Any]:
    unit = InputUnit("u0", "files", tuple(str(folder / n) for n in names), root=str(folder))
    return {"unit": unit.to_json()}


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- the prepare stage: same rows and tokens, no files left ---------------------------------------


def test_a_big_local_file_is_spooled_and_gives_the_in_memory_tokens(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "big.flac").write_bytes(big_flac())
    (folder / "small.wav").write_bytes(small_wav())
    spill = tmp_path / "spill"
    whole, rows, prepare = prepare_both(files_row(folder, ["big.flac", "small.wav"]), spill)
    assert rows == whole
    assert prepare.stats.spooled == 1  # the big one only
    assert {r["item_id"] for r in rows if r["row_kind"] == SEGMENT} == {"big.flac", "small.wav"}
    assert tokens_of(rows) == tokens_of(whole)
    assert list(spill.iterdir()) == []


def test_a_big_tar_member_is_spooled_with_its_metadata(tmp_path: Path) -> None:
    shard = tmp_path / "in" / "shard-0.tar"
    shard.parent.mkdir()
    shard.write_bytes(
        tar_bytes(
            [
                ("a/big.flac", big_flac()),
                ("a/big.json", json.dumps({"speaker": "s1"}).encode()),
                ("a/big.wav", big_flac(6.0, seed=2)),  # a second (big) audio member: spooled, unused
                ("b/small.wav", small_wav()),
                ("b/small.txt", b"hello"),
            ]
        )
    )
    unit = InputUnit("shard-0", "tar", (str(shard),), root=str(shard.parent))
    spill = tmp_path / "spill"
    whole, rows, prepare = prepare_both({"unit": unit.to_json()}, spill)
    assert rows == whole
    assert prepare.stats.spooled == 1
    first = next(r for r in rows if r["item_id"] == "shard-0/a/big" and r["seg_index"] == 0)
    assert json.loads(first["metadata"]) == {
        "__key__": "a/big",
        "json": {"speaker": "s1"},
        "_extra_audio_members": ["wav"],
    }
    assert tokens_of(rows) == tokens_of(whole)
    assert list(spill.iterdir()) == []


def test_a_big_s3_object_and_manifest_entry_are_spooled(s3_server, tmp_path: Path) -> None:
    bucket = s3_server.make_bucket("semtok-spool")
    fs = s3_server.filesystem()
    root = bucket.removeprefix("s3://")
    fs.pipe_file(f"{root}/files/big.flac", big_flac())
    fs.pipe_file(f"{root}/files/small.wav", small_wav())
    fs.pipe_file(f"{root}/man/audio/m.flac", big_flac(8.0, seed=5))
    fs.pipe_file(f"{root}/man/list.jsonl", b'{"id": "m1", "audio": "audio/m.flac"}\n')
    options = s3_server.storage_options
    spill = tmp_path / "spill"
    for where in ("files", "man/list.jsonl"):
        units = plan_units(f"{bucket}/{where}", storage_options=options)
        assert len(units) == 1
        row = {"unit": units[0].to_json()}
        whole, rows, prepare = prepare_both(row, spill, storage_options=options)
        assert rows == whole, where
        assert prepare.stats.spooled == 1, where
        assert not any(r["row_kind"] == ERROR for r in rows), where
        assert tokens_of(rows) == tokens_of(whole), where
        assert list(spill.iterdir()) == []


def test_a_decoder_that_dies_on_a_spooled_item_leaves_no_file(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_kill.flac").write_bytes(poison.KILL + big_flac())
    (folder / "b_good.flac").write_bytes(big_flac(seed=3))
    spill = tmp_path / "spill"
    prepare = PrepareUnit(SPEC, decode_fn=poison.DECODE_FN, spool_min_bytes=THRESHOLD, spill_dir=str(spill))
    rows = list(prepare(files_row(folder, ["a_kill.flac", "b_good.flac"])))
    assert {r["item_id"]: r["reason"] for r in rows if r["row_kind"] == ERROR} == {
        "a_kill.flac": "decode_crashed"
    }
    assert {r["item_id"] for r in rows if r["row_kind"] == SEGMENT} == {"b_good.flac"}
    assert prepare.stats.spooled == 2
    assert list(spill.iterdir()) == []


def test_spooled_files_of_dead_workers_are_swept(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f"{int(dead.stdout)}-3-0123456789ab.in"
    mine = tmp_path / f"{os.getpid()}-4-0123456789ab.in"
    for path in (stale, mine):
        path.write_bytes(b"x")
    assert sweep_spill_dir(str(tmp_path)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [mine.name]


# --- the reader: files handed over and deleted, failures classified as before --------------------


def test_the_reader_hands_big_items_over_as_files_and_deletes_each_when_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "CHUNK", 16 * 1024)  # many chunks per item
    folder = tmp_path / "in"
    folder.mkdir()
    contents = {"a.flac": big_flac(), "b.wav": small_wav(), "c.flac": big_flac(seed=4)}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    spooler = Spooler(str(tmp_path / "spool"), THRESHOLD)
    items = read_unit(InputUnit.from_json(files_row(folder, list(contents))["unit"]), spool=spooler)
    first = next(items)
    assert first.data is None and first.path is not None
    assert Path(first.path).read_bytes() == contents["a.flac"]
    second = next(items)  # asking for the next item deletes the previous one's file
    assert not os.path.exists(first.path) and second.path is None and second.data == contents["b.wav"]
    third = next(items)
    assert third.path is not None and Path(third.path).read_bytes() == contents["c.flac"]
    items.close()  # the consumer stops early: the file goes too
    assert not os.path.exists(third.path) and list((tmp_path / "spool").iterdir()) == []


class FlakyFS(MemoryFileSystem):
    """An object store whose reads fail as configured per object name (`FAULTS`): a test double for
    storage trouble in the middle of a read, both for a whole read (`cat_file`) and a chunked one."""

    protocol = "semtokflaky"
    store: dict[str, Any] = {}  # its own objects, not the memory filesystem's
    pseudo_dirs = [""]
    FAULTS: dict[str, str] = {}
    calls: dict[str, int] = {}

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, str) and path.startswith(f"{cls.protocol}://"):
            path = path[len(f"{cls.protocol}://") :]
        return super()._strip_protocol(path)

    def _fault(self, path: str) -> str:
        name = path.rsplit("/", 1)[-1]
        self.calls[name] = self.calls.get(name, 0) + 1
        fault = self.FAULTS.get(name, "")
        if fault == "reset_once" and self.calls[name] > 1:
            return ""
        return fault

    def cat_file(self, path: str, start: Any = None, end: Any = None, **kwargs: Any) -> bytes:
        fault = self._fault(path)
        if fault:
            reader = _FlakyReader(io.BytesIO(super().cat_file(path)), fault)
            return b"".join(iter(lambda: reader.read(1 << 30), b""))
        return super().cat_file(path, start, end, **kwargs)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        fault = self._fault(path)
        handle = super()._open(path, mode, **kwargs)
        return _FlakyReader(handle, fault) if fault else handle


class _FlakyReader:
    """Gives the first 100 KB, then fails (or stalls) as `fault` says."""

    def __init__(self, inner: Any, fault: str) -> None:
        self.inner, self.fault, self.given = inner, fault, 0

    def read(self, size: int = -1) -> bytes:
        if self.given >= 100_000:
            if self.fault == "denied":
                raise PermissionError("Access Denied")
            if self.fault in ("reset", "reset_once"):
                raise ConnectionResetError("connection reset by peer")
            if self.fault == "stall":
                time.sleep(0.5)
                return self.inner.read(min(size, 100_000))
        want = 100_000 - self.given if size < 0 else min(size, 100_000 - self.given)
        data = self.inner.read(want if want > 0 else size)
        self.given += len(data)
        return data

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> _FlakyReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture()
def flaky() -> dict[str, bytes]:
    fsspec.register_implementation(FlakyFS.protocol, FlakyFS, clobber=True)
    FlakyFS.store.clear()
    FlakyFS.pseudo_dirs[:] = [""]
    FlakyFS.calls.clear()
    contents = {name: big_flac(seed=i) for i, name in enumerate(["denied.flac", "gone.flac", "once.flac"])}
    fs = fsspec.filesystem(FlakyFS.protocol)
    for name, data in contents.items():
        if name != "gone.flac":
            fs.pipe_file(f"/b/{name}", data)
    FlakyFS.FAULTS = {
        "denied.flac": "denied",
        "once.flac": "reset_once",
        "reset.flac": "reset",
        "stall.flac": "stall",
    }
    return contents


def _flaky_unit(names: list[str]) -> InputUnit:
    return InputUnit("u0", "files", tuple(f"semtokflaky:///b/{n}" for n in names), root="semtokflaky:///b")


def _outcomes(items: list[SourceItem]) -> dict[str, str]:
    return {i.item_id: i.error.reason if i.error is not None else "ok" for i in items}


def test_read_errors_mid_copy_are_classified_as_a_whole_read_classifies_them(
    flaky: dict[str, bytes], tmp_path: Path
) -> None:
    unit = _flaky_unit(["denied.flac", "gone.flac", "once.flac"])
    whole = list(read_unit(unit))
    FlakyFS.calls.clear()
    spooler = Spooler(str(tmp_path / "spool"), THRESHOLD)
    spooled = []
    for item in read_unit(unit, spool=spooler):
        if item.path is not None:  # read the file while it is the current item
            spooled.append((item, Path(item.path).read_bytes()))
        else:
            spooled.append((item, None))
    expected = {"denied.flac": "unreadable_object", "gone.flac": "unreadable_object", "once.flac": "ok"}
    assert _outcomes(whole) == expected
    assert _outcomes([item for item, _ in spooled]) == expected
    assert spooled[2][1] == flaky["once.flac"] and FlakyFS.calls["once.flac"] == 2  # retried, whole
    assert spooler.spooled == 1 and list((tmp_path / "spool").iterdir()) == []


def test_an_outage_mid_copy_fails_the_unit_as_before(flaky: dict[str, bytes], tmp_path: Path) -> None:
    fsspec.filesystem(FlakyFS.protocol).pipe_file("/b/reset.flac", flaky["once.flac"])
    unit = _flaky_unit(["reset.flac"])
    with pytest.raises(ConnectionResetError):
        list(read_unit(unit))
    with pytest.raises(ConnectionResetError):
        list(read_unit(unit, spool=Spooler(str(tmp_path / "spool"), THRESHOLD)))
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_stalled_copy_times_out_and_its_file_goes(flaky: dict[str, bytes], tmp_path: Path) -> None:
    fsspec.filesystem(FlakyFS.protocol).pipe_file("/b/stall.flac", flaky["once.flac"])
    unit = _flaky_unit(["stall.flac"])
    policy = ReadPolicy(item_timeout_s=1.0)
    spooler = Spooler(str(tmp_path / "spool"), THRESHOLD)
    assert _outcomes(list(read_unit(unit, policy=policy))) == {"stall.flac": "read_timeout"}
    assert _outcomes(list(read_unit(unit, policy=policy, spool=spooler))) == {"stall.flac": "read_timeout"}
    deadline = time.monotonic() + 10
    while (
        any(t.name.startswith("semtok-read") for t in threading.enumerate()) and time.monotonic() < deadline
    ):
        time.sleep(0.1)  # the copy notices it was called off at its next chunk
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_tar_truncated_inside_a_big_member_is_truncated_tar_as_before(tmp_path: Path) -> None:
    data = tar_bytes([("a.wav", small_wav()), ("b.flac", big_flac()), ("c.wav", small_wav(2))])
    shard = tmp_path / "in" / "s.tar"
    shard.parent.mkdir()
    shard.write_bytes(data[: len(data) // 2])  # cut inside b.flac
    unit = InputUnit("s", "tar", (str(shard),), root=str(shard.parent))
    spooler = Spooler(str(tmp_path / "spool"), THRESHOLD)
    whole = _outcomes(list(read_unit(unit)))
    assert whole == {"s/a": "ok", "s/#truncated": "truncated_tar"}
    assert _outcomes(list(read_unit(unit, spool=spooler))) == whole
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_spool_folder_that_cannot_be_written_makes_spill_failed_rows(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "big.flac").write_bytes(big_flac())
    (folder / "small.wav").write_bytes(small_wav())
    (folder / "s.tar").write_bytes(tar_bytes([("x.flac", big_flac()), ("y.wav", small_wav())]))
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    spooler = Spooler(str(blocker / "spool"), THRESHOLD)
    files = InputUnit("u0", "files", (str(folder / "big.flac"), str(folder / "small.wav")), root=str(folder))
    tar = InputUnit("s", "tar", (str(folder / "s.tar"),), root=str(folder))
    got = _outcomes(list(read_unit(files, spool=spooler)) + list(read_unit(tar, spool=spooler)))
    assert got == {"big.flac": "spill_failed", "small.wav": "ok", "s/x": "spill_failed", "s/y": "ok"}


def test_a_spool_copy_keeps_the_spill_reserve_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like a streamed decode's spill file, a spooled copy never takes its folder below the reserve."""
    import pipeline.io.audio_decoding as audio_decoding

    monkeypatch.setattr(audio_decoding, "SPILL_FREE_RESERVE_BYTES", 2**60)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "big.flac").write_bytes(big_flac())
    spooler = Spooler(str(tmp_path / "spool"), THRESHOLD)
    items = list(
        read_unit(InputUnit("u0", "files", (str(folder / "big.flac"),), root=str(folder)), spool=spooler)
    )
    assert _outcomes(items) == {"big.flac": "spill_failed"}
    assert items[0].error is not None and "MiB stay free" in items[0].error.detail
    assert list((tmp_path / "spool").iterdir()) == []
