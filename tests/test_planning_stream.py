"""Streaming planning cuts exactly the units the whole-listing planner cuts, while it lists.

`iter_units` walks the input one folder at a time; `plan_units` lists it whole with `find` and
sorts. Same ids, members, stamps, order and exclusions on every input kind, on names chosen to
sort differently folder by folder than as full paths, locally and on S3 (SeaweedFS); and the
first unit comes out after a few folder listings, not after the whole tree.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from pipeline.io.sources import iter_units, plan_units
from pipeline.tokenize.work_plan import PlanStream, plan_against_output
from tests.conftest import local_writer, s3_writer
from tests.corpus import speech_like, wav_bytes
from tests.helpers import build_every_input_kind

# Names whose folder-by-folder order differs from their order as full paths ('-' < '/' < '0'),
# plus spaces, dots, case, non-ASCII, a folder named like audio and deep nesting.
TRICKY = [
    "a.wav",
    "a-b.wav",
    "a/x.wav",
    "a/y/z.wav",
    "a0/w.wav",
    "a b/v.wav",
    "a.b/u.flac",
    "A/t.wav",
    "é/s.wav",
    "e/r.mp3",
    "dir.wav/q.wav",
    "deep/1/2/3/4/p.wav",
    "deep/1/2/o.wav",
    "deep/1-2/n.wav",
    "z.txt",
    ".hidden.wav",
    "m/.n.wav",
]


def _same(url: str, options: dict[str, Any] | None = None, **kwargs: Any) -> list:
    seen_eager: dict[str, str] = {}
    seen_lazy: dict[str, str] = {}
    eager = plan_units(url, storage_options=options, seen=seen_eager, **kwargs)
    lazy = list(iter_units(url, storage_options=options, seen=seen_lazy, **kwargs))
    assert lazy == eager, (kwargs, [u.unit_id for u in lazy], [u.unit_id for u in eager])
    assert seen_lazy == seen_eager
    return eager


def _write_tree(write: Callable[[str, bytes], None], names: list[str]) -> None:
    clip = wav_bytes(speech_like(0.05, 16000, seed=1), 16000)
    for index, name in enumerate(names):
        write(name, clip + bytes([index]))


def record_listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The folders the local filesystem is asked to list from now on, in order (the test's list)."""
    listed: list[str] = []
    original = LocalFileSystem.ls

    def counting_ls(self, path, detail=True, **kwargs):  # noqa: ANN001 - fsspec's signature
        listed.append(str(path))
        return original(self, path, detail=detail, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "ls", counting_ls)
    return listed


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream-corpora")
    build_every_input_kind(lambda sub: local_writer(root / sub), long_seconds=20)
    return root


@pytest.mark.parametrize("sub", ["files", "tars", "pq", "man/manifest.jsonl", "man/manifest.csv", ""])
@pytest.mark.parametrize("files_per_unit", [1, 3, 256])
def test_every_kind_plans_the_same_units(corpora: Path, sub: str, files_per_unit: int) -> None:
    url = str(corpora / sub) if sub else str(corpora)
    units = _same(url, files_per_unit=files_per_unit)
    assert units
    _same(url, files_per_unit=files_per_unit, id_prefix="batch2/")


def test_tricky_names_plan_the_same_units(tmp_path: Path) -> None:
    root = tmp_path / "in"
    _write_tree(local_writer(root), TRICKY)
    (root / "empty" / "dirs").mkdir(parents=True)
    os.mkfifo(root / "a" / "fifo.wav")  # special files are listed (readers make them error rows)
    (root / "a" / "link.wav").symlink_to(root / "a.wav")
    (root / "deep" / "up").symlink_to(root)  # a directory link: listed, never followed
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.wav"))
    try:
        for files_per_unit in (1, 2, 5, 1000):
            units = _same(str(root), files_per_unit=files_per_unit, kind="files")
            assert sum(len(u.uris) for u in units) == 16 + 3  # 16 audio names, fifo, link, socket
    finally:
        sock.close()


def test_exclusions_and_the_output_folder_plan_the_same_units(tmp_path: Path) -> None:
    root = tmp_path / "in"
    _write_tree(local_writer(root), TRICKY)
    _write_tree(local_writer(root / "out" / "v1"), ["tokens/x.wav", "y.wav"])  # the job's own output
    first = plan_units(str(root), files_per_unit=2)
    committed = frozenset(uri for unit in first[::2] for uri in unit.uris)
    for kwargs in (
        {"exclude_uris": committed},
        {"exclude_under": str(root / "out")},
        {"exclude_uris": committed, "exclude_under": str(root / "out"), "id_prefix": "p/"},
        {"glob": "**/*.wav"},
        {"glob": "a/*.wav", "exclude_uris": committed},
    ):
        _same(str(root), files_per_unit=2, **kwargs)
    assert _same(str(root / "a.wav")) == plan_units(str(root / "a.wav"))  # a single file


GLOBS = [
    "**/*.wav",
    "*.wav",
    "a/*.wav",
    "*/*.wav",
    "a*/**",
    "**",
    "**/[ab]*.wav",
    "**/[!a]*.wav",
    "deep/**/p.wav",
    "d?ep/1/**",
    "deep/1/*/*/*/*.wav",
    "*/y/*",
    "a/",
    "*/",
    "a.wav",  # no wildcard: looked up whole
    "nowhere/*.wav",
    "**/*.{wav,mp3}",  # no brace expansion: matches nothing, in both planners
]


@pytest.mark.parametrize("glob", GLOBS)
def test_globs_stream_the_same_units(tmp_path: Path, glob: str) -> None:
    """A glob is matched while walking (`_glob_walk`): the same files as fsspec's glob over `find`."""
    root = tmp_path / "in [x]"  # a folder name that would be a pattern if not escaped
    _write_tree(local_writer(root), TRICKY)
    _write_tree(local_writer(root / "out" / "v1"), ["tokens/x.wav"])
    for kwargs in ({}, {"exclude_under": str(root / "out")}, {"kind": "files", "id_prefix": "p/"}):
        for files_per_unit in (1, 3):
            _same(str(root), files_per_unit=files_per_unit, glob=glob, **kwargs)


def test_globs_of_every_kind_stream_the_same_units(corpora: Path) -> None:
    for glob in ("**/*.tar", "tars/*", "pq/**", "**/*.parquet", "files/**/*.wav", "*/*"):
        assert _same(str(corpora), files_per_unit=2, glob=glob), glob


def test_a_glob_lists_one_folder_at_a_time_and_only_to_its_depth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "in"
    _write_tree(local_writer(root), [f"d{d:03d}/e/f{f}.wav" for d in range(30) for f in range(3)])
    _write_tree(local_writer(root), ["top.wav", "d000/g.wav"])
    listed = record_listings(monkeypatch)
    units = iter_units(str(root), kind="files", files_per_unit=2, glob="**/f*.wav")
    first = next(units)
    assert len(first.uris) == 2 and len(listed) <= 3  # the root, d000, d000/e
    assert len([first, *units]) == 45 and len(listed) == 61
    listed.clear()
    assert [u.uris for u in iter_units(str(root), kind="files", glob="*.wav")] == [
        (f"file://{root}/top.wav",)
    ]
    assert listed == [str(root)]  # one level: no subfolder is listed
    listed.clear()
    assert len(list(iter_units(str(root), kind="files", glob="d001/*/*.wav"))) == 1
    assert listed == [str(root / "d001"), str(root / "d001" / "e")]  # from its literal folder


def test_s3_plans_the_same_units(s3_server) -> None:
    bucket = s3_server.make_bucket("semtok-stream")
    fs = s3_server.filesystem()
    _write_tree(s3_writer(fs, f"{bucket}/tricky"), [n for n in TRICKY if not n.startswith(".")])
    build_every_input_kind(lambda sub: s3_writer(fs, f"{bucket}/{sub}"), long_seconds=20)
    options = s3_server.storage_options
    for files_per_unit in (1, 3):
        assert _same(f"{bucket}/tricky", options, files_per_unit=files_per_unit)
    for sub in ("files", "tars", "pq", "man/manifest.jsonl"):
        assert _same(f"{bucket}/{sub}", options, files_per_unit=4)
    first = plan_units(f"{bucket}/files", storage_options=options, files_per_unit=2)[0]
    committed = frozenset(first.uris)
    _same(f"{bucket}/files", options, files_per_unit=2, exclude_uris=committed)
    for glob in ("**/*.wav", "*/*.wav", "a/*", "**/*.tar", "d?ep/**"):
        _same(f"{bucket}/tricky", options, files_per_unit=2, glob=glob)
    assert _same(bucket, options, files_per_unit=2, glob="tars/*.tar")


def test_the_first_unit_comes_before_the_listing_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "in"
    _write_tree(local_writer(root), [f"d{d:03d}/f{f}.wav" for d in range(60) for f in range(3)])
    listed = record_listings(monkeypatch)
    units = iter_units(str(root), kind="files", files_per_unit=2)
    first = next(units)
    assert len(first.uris) == 2 and len(listed) <= 2  # the root and the first folder
    assert len([first, *units]) == 90 and len(listed) == 61


def test_auto_kind_lists_twice_and_stops_at_the_first_parquet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kind="auto"` must see the whole listing to choose: the streaming planner walks once to
    decide (stopping at the first `.parquet`) and once to plan; an explicit kind walks once."""
    root = tmp_path / "in"
    _write_tree(local_writer(root), [f"d{d}/f.wav" for d in range(4)])
    listed = record_listings(monkeypatch)
    assert len(list(iter_units(str(root), kind="files"))) == 1 and len(listed) == 5
    listed.clear()
    assert len(list(iter_units(str(root)))) == 1 and len(listed) == 10
    (root / "d0" / "x.parquet").write_bytes(b"")  # makes the input parquet: found in the first folder
    listed.clear()
    assert list(iter_units(str(root))) and listed[:2] == [str(root), str(root / "d0")]
    assert listed.count(str(root / "d3")) == 1  # the deciding walk stopped in d0


def test_the_streaming_work_plan_matches_the_materialised_one(tmp_path: Path) -> None:
    """PlanStream is what a run iterates; `plan_against_output` (verify, plan) materialises it."""
    root = tmp_path / "in"
    _write_tree(local_writer(root), TRICKY)
    kwargs = {"storage_options": {}, "kind": "files", "files_per_unit": 2, "glob": None}
    stream = PlanStream(str(root), None, None, **kwargs)
    units = list(stream)
    plan = plan_against_output(str(root), None, None, **kwargs)
    assert units == plan.units and stream.done and stream.planned == plan.planned == len(units)
    assert stream.changed == plan.changed == [] and stream.deleted_uris == plan.deleted_uris == []


@pytest.mark.slow
def test_a_run_encodes_before_the_listing_ends(
    tmp_path: Path,
    ray_local,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001, ARG001
) -> None:
    """The listing of the last folders waits until a unit is committed: a run that listed the
    whole input before encoding would never get there (the hook fails after 120 s). Rounds of two
    units; every item ends exactly once and a rerun has nothing to do."""
    import io
    import time

    import pipeline.tokenize.job as job
    from pipeline.config import TokenizeConfig
    from pipeline.dataset.layout import OutputLayout
    from pipeline.dataset.manifest import load_tokens, read_manifest
    from pipeline.ops.verify import verify
    from pipeline.tokenize.fingerprint import job_fingerprint
    from tests.helpers import TINY

    root, out = tmp_path / "in", tmp_path / "out"
    names = [f"d{d}/f.wav" for d in range(5)]
    _write_tree(local_writer(root), names)
    config = TokenizeConfig(  # an explicit kind: "auto" lists the whole input once to choose it
        input=str(root), output=str(out), input_kind="files", files_per_unit=1, progress_interval_s=60, **TINY
    )
    manifest_dir = OutputLayout.for_fingerprint(str(out), job_fingerprint(config)).manifest_dir
    original = LocalFileSystem.ls
    waited: list[float] = []

    def late_ls(self, path, detail=True, **kwargs):  # noqa: ANN001 - fsspec's signature
        if str(path).rstrip("/").endswith("/d3"):
            started = time.monotonic()
            while not list(Path(manifest_dir).glob("*.json")):
                assert time.monotonic() - started < 120, "nothing was committed while the input was listed"
                time.sleep(0.2)
            waited.append(time.monotonic() - started)
        return original(self, path, detail=detail, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "ls", late_ls)
    monkeypatch.setattr(job, "ROUND_UNITS", 2)
    monkeypatch.setattr(job, "ROUND_WAIT_S", 0.5)
    log = io.StringIO()
    summary = job.run_tokenize(config, stream=log)
    assert waited and summary.units_planned == summary.units_committed == 5, log.getvalue()
    text = log.getvalue()
    assert "round 3: 1 more units" in text and "5 units to do, 0 already committed" in text
    layout = OutputLayout.for_fingerprint(str(out), job_fingerprint(config))
    ids = sorted(load_tokens(fsspec.filesystem("file"), layout, columns=["id"]).column("id").to_pylist())
    assert ids == sorted(names) and len(read_manifest(fsspec.filesystem("file"), layout)) == 5
    assert verify(str(out), input=str(root)).ok
    monkeypatch.setattr(LocalFileSystem, "ls", original)
    again = job.run_tokenize(config, stream=io.StringIO())
    assert again.units_planned == 0 and again.units_skipped == 5 and again.items == 0


def test_the_gpu_encoder_pool_starts_full_and_follows_the_cluster() -> None:
    """Without --num-encoders a GPU pool starts on every GPU and may grow and shrink with the
    cluster; with it, or on CPUs (a growing pool would starve the prepare stage), it is fixed."""
    import ray.data

    from pipeline.config import TokenizeConfig
    from pipeline.tokenize.job import plan_resources
    from tests.helpers import TINY

    gpu = plan_resources(TokenizeConfig(input="x", output="y", **TINY), {"CPU": 16.0, "GPU": 4.0})
    pool = gpu.pool()
    assert isinstance(pool, ray.data.ActorPoolStrategy)
    assert (pool.initial_size, pool.min_size, pool.max_size) == (4, 1, float("inf"))
    config = TokenizeConfig(input="x", output="y", num_encoders=2, **TINY)
    fixed = plan_resources(config, {"CPU": 16.0, "GPU": 4.0})
    assert (fixed.pool().min_size, fixed.pool().max_size, fixed.pool().initial_size) == (2, 2, 2)
    cpu = plan_resources(TokenizeConfig(input="x", output="y", **TINY), {"CPU": 64.0}).pool()
    assert cpu.min_size == cpu.max_size == cpu.initial_size == 8


def test_rounds_are_sized_by_files_and_units() -> None:
    """A round takes units until it holds `max_files` files or `n` units, so units of 1 file and of
    256 files make rounds of about the same work; a unit larger than the cap still goes, alone."""
    from pipeline.records import InputUnit
    from pipeline.tokenize.job import UnitFeed

    sizes = [3, 3, 3, 10, 1, 1, 1, 1, 1, 2]
    units = [
        InputUnit(f"u{i}", "files", tuple(f"/in/{i}/{k}.wav" for k in range(n))) for i, n in enumerate(sizes)
    ]
    feed = UnitFeed(units, limit=4, max_files=6)
    try:
        rounds = []
        while batch := feed.take(4, max_files=6, wait_s=5.0):
            rounds.append([len(unit.uris) for unit in batch])
    finally:
        feed.close()
    assert rounds == [[3, 3], [3], [10], [1, 1, 1, 1], [1, 2]]
    assert feed.total == len(units)
