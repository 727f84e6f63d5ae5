"""Faults: node loss, crashed drivers and actors, storage outages — exactly once, resumable.

The slow tests run real jobs (the tiny codec) in subprocesses with their own Ray, because fault
hooks (tests/faults.py) reach Ray workers through environment variables and some faults kill the
whole driver.
After every fault, `verify` must find 0 missing units/items, 0 duplicates, 0 orphans, 0 bad files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest

from pipeline.config import TokenizeConfig
from pipeline.dataset.commit import commit_unit
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.manifest import load_errors, load_tokens
from pipeline.io.sources import plan_units
from pipeline.io.storage import is_transient, open_filesystem
from pipeline.ops.verify import verify
from pipeline.tokenize.fingerprint import job_fingerprint
from pipeline.tokenize.job import run_tokenize
from tests.corpus import speech_like, wav_bytes
from tests.faults import (
    COMMITTER_CRASH_MARKER_ENV,
    COMMITTER_CRASH_ONCE_ENV,
    CRASH_MARKER_ENV,
    CRASH_ONCE_ENV,
    FAIL_ITEMS_ENV,
)
from tests.helpers import FINGERPRINT, REPO, TINY, TINY_FLAGS, run_cli, token_row

# --- helpers --------------------------------------------------------------------------------


def write_wavs(folder: Path, names: list[str], seconds: float = 0.3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        seed = int(hashlib.sha256(name.encode()).hexdigest()[:6], 16)
        (folder / name).write_bytes(wav_bytes(speech_like(seconds + 0.05 * (i % 3), 16000, seed=seed), 16000))


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMTOK_TEST_")}
    env.update({"RAY_ADDRESS": "", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(REPO)})
    env.update(extra)
    return env


def semtok(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, faults: bool = False
) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a fresh process (its own local Ray when it needs one).
    `faults`: with the encode actor of tests/faults.py, which injects the faults `env` names."""
    module = "tests.faults" if faults else "jobs.cli"
    return run_cli(*args, env=env or cli_env(), timeout=timeout, module=module)


def tokenize_args(src: str, out: str, *extra: str) -> list[str]:
    """Many small batches (8 segments, not the CPU default of 32), so that a fault injected after the
    first commits lands mid-job; `extra` may override any of these."""
    flags = ["--files-per-unit", "1", "--encode-batch-segments", "8"]
    return ["tokenize", src, "--out", out, *TINY_FLAGS, *flags, *extra]


def the_version(fs: fsspec.AbstractFileSystem, out: str) -> OutputLayout:
    fs.invalidate_cache()
    versions = [p for p in fs.ls(fs._strip_protocol(out)) if fs.isdir(p)]
    assert len(versions) == 1, versions
    return OutputLayout(out, versions[0].rstrip("/").rsplit("/", 1)[-1])


def assert_exactly_once(fs, layout: OutputLayout, expected_ids: set[str]) -> tuple[list[str], list[dict]]:
    tokens = load_tokens(fs, layout, columns=["id"]).column("id").to_pylist()
    errors = load_errors(fs, layout).to_pylist()
    ids = tokens + [e["id"] for e in errors]
    assert len(ids) == len(set(ids)), "an item appears twice"
    assert set(ids) == expected_ids, set(ids) ^ expected_ids
    return tokens, errors


def assert_clean(out: str, src: str | None = None, **options) -> None:
    report = verify(out, input=src, **options)
    assert report.ok, report.text()


def skipped_from(stderr: str) -> tuple[int, int]:
    """(units to do, units already committed) from the job's plan line."""
    found = re.search(r"(\d+) units to do, (\d+) already committed", stderr)
    assert found, stderr[-2000:]
    return int(found.group(1)), int(found.group(2))


def digests(root: Path, folders: tuple[str, ...] = ("tokens", "errors", "wds")) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(root.glob(f"*/{folder}/*"))
        if p.is_file()
    }


FAKE_FP = {**FINGERPRINT, "test": True}


# --- fast: verify, retries, dedup, Ray's defaults -------------------------------------------


def test_verify_reports_each_kind_of_problem(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    fs, _ = open_filesystem(out)
    layout = OutputLayout.for_fingerprint(out, FAKE_FP)
    for unit, ids in (("u1", ["a", "b"]), ("u2", ["c"])):
        commit_unit(
            fs,
            layout,
            unit,
            token_rows=[token_row(i) for i in ids],
            fingerprint=FAKE_FP,
            error_rows=[
                {
                    "id": f"{unit}-bad",
                    "source_uri": "x",
                    "stage": "decode",
                    "reason": "undecodable",
                    "detail": "no",
                }
            ]
            if unit == "u2"
            else (),
            formats=("parquet", "webdataset"),
        )
    report = verify(out)
    assert report.ok, report.text()
    assert (report.versions[0].items_tokens, report.versions[0].items_errors) == (3, 1)

    # a duplicate across units, an orphan, a truncated file, a missing listed file
    commit_unit(fs, layout, "u3", token_rows=[token_row("a")], fingerprint=FAKE_FP)
    (Path(layout.tokens_dir) / "part-crashed.parquet").write_bytes(b"half")
    Path(layout.path("_tmp/attempt1")).mkdir(parents=True)
    Path(layout.path("_tmp/attempt1/x.tmp")).write_bytes(b"x")
    wds = Path(layout.wds_path("u1"))
    wds.write_bytes(wds.read_bytes()[:100])
    Path(layout.errors_path("u2")).unlink()
    report = verify(out)
    v = report.versions[0]
    assert v.duplicate_items == ["a"]
    assert v.orphaned_files == ["_tmp/attempt1/x.tmp", "tokens/part-crashed.parquet"]
    problems = {b["path"]: b["problem"] for b in v.bad_files}
    assert "size" in problems["wds/u1.tar"] and "missing" in problems["errors/part-u2.parquet"]
    assert "n_items" in problems["_manifest/u2.json"]
    assert not report.ok and report.problems == 6

    # the CLI: exit status 1, JSON on request; --version picks one
    done = semtok("verify", out, "--json", "--version", layout.version)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["problems"] == 6
    assert semtok("verify", out, "--version", "nope").returncode == 2


def test_verify_with_input_reports_missing_units_and_items(tmp_path: Path) -> None:
    src, out = tmp_path / "in", str(tmp_path / "out")
    write_wavs(src, [f"f{i}.wav" for i in range(5)])
    config = TokenizeConfig(input=str(src), output=out, files_per_unit=2, **TINY)
    fp = job_fingerprint(config)
    fs, _ = open_filesystem(out)
    layout = OutputLayout.for_fingerprint(out, fp)
    units = plan_units(str(src), files_per_unit=2)
    assert len(units) == 3
    for unit in units[:2]:  # the last unit never committed
        ids = [u.rsplit("/", 1)[-1] for u in unit.uris]
        commit_unit(
            fs,
            layout,
            unit.unit_id,
            token_rows=[token_row(i) for i in ids[:-1]],
            fingerprint=fp,
            unit_info={**unit.to_dict(), "n_items": len(ids) - 1},
        )
    report = verify(out, input=str(src), files_per_unit=2)
    v = report.versions[0]
    assert v.missing_units == [units[2].unit_id]
    # f4 (uncommitted unit) and f1, f3 (lost from their committed units)
    assert v.missing_items == ["f1.wav", "f3.wav", "f4.wav"]


def test_store_down_errors_are_transient() -> None:
    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(ConnectionClosedError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
    assert is_transient(OSError("Cannot connect to host 127.0.0.1:1 ssl:default [Connection refused]"))
    assert not is_transient(FileNotFoundError("gone"))
    assert not is_transient(ValueError("connection refused"))  # not a storage error type


def test_ray_data_actor_pool_restarts_actors_and_retries_their_tasks() -> None:
    """We rely on these Ray Data defaults (no named map_batches argument sets them)."""
    from ray.data import DataContext
    from ray.data._internal.execution.operators.actor_pool_map_operator import ActorPoolMapOperator

    args = ActorPoolMapOperator._apply_default_remote_args({}, DataContext.get_current())
    assert args["max_restarts"] == -1 and args["max_task_retries"] == -1


def test_rerun_of_a_finished_1000_unit_job_encodes_nothing(tmp_path: Path) -> None:
    """1,000 committed units (committed directly with commit_unit, as the job would), then the
    job again: it plans, reads the manifest, and never starts Ray."""
    from bench.rerun_noop import build_committed, time_rerun

    config = build_committed(tmp_path, 1000)
    summary, wall = time_rerun(config)
    print(f"\n1000-unit no-op rerun: {wall:.2f} s")
    assert summary.units_planned == 0 and summary.items == 0 and summary.units_skipped == 1000
    assert not summary.resources  # the encode stage was never planned
    assert_clean(config.output, config.input)


# --- slow: real jobs with faults --------------------------------------------------------------


def wait_for_manifests(
    fs, manifest_dir: str, count: int, proc: subprocess.Popen, timeout: float = 240
) -> int:
    """Poll the manifest folder until `count` units are committed; returns how many there are."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the job ended before the fault was injected"
        fs.invalidate_cache()
        try:
            n = len([p for p in fs.ls(manifest_dir) if p.endswith(".json")])
        except FileNotFoundError:
            n = 0
        if n >= count:
            return n
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} units committed after {timeout} s")


@pytest.mark.slow
def test_retry_failed_moves_fixed_items_into_tokens(tmp_path: Path) -> None:
    from tests.conftest import local_writer
    from tests.corpus import build_tar_shards

    write_wavs(tmp_path / "files", [f"f{i}.wav" for i in range(6)])
    spec = build_tar_shards(local_writer(tmp_path / "tars"))
    broken = {"files": ["f1.wav", "f4.wav"], "tars": ["shard-000000/sample0002"]}
    expected = {"files": {f"f{i}.wav" for i in range(6)}, "tars": set(spec.by_id())}
    read_errors = {i.item_id: i.expected for i in spec.items if i.expected != "ok"}
    for name in ("files", "tars"):
        out = str(tmp_path / f"out-{name}")
        env = cli_env(**{FAIL_ITEMS_ENV: ",".join(broken[name])})
        done = semtok(
            *tokenize_args(
                str(tmp_path / name),
                out,
                "--files-per-unit",
                "2",
                "--format",
                "parquet",
                "--format",
                "webdataset",
            ),
            env=env,
            faults=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        fs, _ = open_filesystem(out)
        layout = the_version(fs, out)
        _, errors = assert_exactly_once(fs, layout, expected[name])
        assert {e["id"] for e in errors if e["reason"] == "encode_failed"} == set(broken[name])
        assert_clean(out, str(tmp_path / name))  # failed items are accounted: nothing is missing

        done = semtok("retry-failed", out)  # "the fix": the fault is gone
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"{len(broken[name])} of " in done.stderr
        tokens, errors = assert_exactly_once(fs, layout, expected[name])
        assert set(broken[name]) <= set(tokens)
        assert {e["id"]: e["reason"] for e in errors} == (read_errors if name == "tars" else {})
        assert_clean(out, str(tmp_path / name), deep=True)
        verified = semtok("verify", out, "--input", str(tmp_path / name))
        assert verified.returncode == 0 and "OK" in verified.stdout, verified.stdout
    # the tar item kept its metadata, and its wds twin was rewritten with it
    fs, _ = open_filesystem(str(tmp_path / "out-tars"))
    layout = the_version(fs, str(tmp_path / "out-tars"))
    row = next(r for r in load_tokens(fs, layout).to_pylist() if r["id"] == "shard-000000/sample0002")
    assert json.loads(row["metadata"])["txt"] == "transcript 2" and row["n_frames"] > 0
    # a files unit whose errors were all fixed lost its errors file
    assert not list((tmp_path / "out-files").glob("*/errors/*"))


@pytest.mark.slow
def test_driver_killed_mid_job_resumes_without_duplicates(tmp_path: Path) -> None:
    names = [f"clip{i:03d}.wav" for i in range(30)]
    write_wavs(tmp_path / "in", names, seconds=2.0)
    src, out = str(tmp_path / "in"), str(tmp_path / "out")
    args = [sys.executable, "-m", "jobs.cli", *tokenize_args(src, out)]
    proc = subprocess.Popen(
        args,
        env=cli_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        fs, _ = open_filesystem(out)
        deadline = time.monotonic() + 120
        while not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*/_manifest")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        manifest_dir = str(next((tmp_path / "out").glob("*/_manifest")))
        wait_for_manifests(fs, manifest_dir, 3, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait(30)
    committed = len(list(Path(manifest_dir).glob("*.json")))
    assert 3 <= committed < len(names), committed
    report = verify(out, input=src)
    assert report.versions[0].missing_units and not report.versions[0].duplicate_items

    done = semtok(*tokenize_args(src, out))
    assert done.returncode == 0, done.stderr[-3000:]
    to_do, skipped = skipped_from(done.stderr)
    assert skipped >= committed and to_do + skipped == len(names)
    fs, _ = open_filesystem(out)
    layout = the_version(fs, out)
    tokens, errors = assert_exactly_once(fs, layout, set(names))
    assert not errors
    assert_clean(out, src, deep=True)  # no orphans: the interrupted unit was overwritten
    assert not list(Path(layout.tmp_root).glob("*"))  # cleanup_tmp ran


@pytest.mark.slow
def test_encode_actor_crash_on_one_item_is_redone_exactly_once(tmp_path: Path) -> None:
    names = [f"f{i}.wav" for i in range(8)]
    write_wavs(tmp_path / "in", names)
    src, out, marker = str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "crashed"
    env = cli_env(**{CRASH_ONCE_ENV: "f5.wav", CRASH_MARKER_ENV: str(marker)})
    done = semtok(*tokenize_args(src, out, "--files-per-unit", "2"), env=env, faults=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.exists(), "the actor never crashed"
    fs, _ = open_filesystem(out)
    layout = the_version(fs, out)
    tokens, errors = assert_exactly_once(fs, layout, set(names))
    assert not errors and "f5.wav" in tokens
    assert_clean(out, src)
    # its tokens are those a run without the crash makes
    clean = str(tmp_path / "clean")
    assert semtok(*tokenize_args(src, clean, "--files-per-unit", "2")).returncode == 0
    clean_layout = the_version(fs, clean)

    def row(lay: OutputLayout) -> dict:
        return next(r for r in load_tokens(fs, lay).to_pylist() if r["id"] == "f5.wav")

    assert row(layout)["semantic_tokens"] == row(clean_layout)["semantic_tokens"]


@pytest.mark.slow
def test_a_committer_lost_mid_job_has_its_units_encoded_again_exactly_once(tmp_path: Path) -> None:
    """A committer dies holding half-assembled units (its node lost): a new one takes its place, the
    round's unreported units are encoded again, and every item still ends exactly once."""
    names = [f"f{i}.wav" for i in range(12)]
    write_wavs(tmp_path / "in", names)
    src, out, marker = str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "committer-crashed"
    env = cli_env(**{COMMITTER_CRASH_ONCE_ENV: "f7.wav", COMMITTER_CRASH_MARKER_ENV: str(marker)})
    args = tokenize_args(src, out, "--files-per-unit", "2", "--encode-batch-segments", "2")
    done = semtok(*args, "--set", "committers=2", env=env, faults=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.exists(), "the committer never crashed"
    assert "was lost" in done.stderr and "encoding them again" in done.stderr, done.stderr[-3000:]
    fs, _ = open_filesystem(out)
    layout = the_version(fs, out)
    tokens, errors = assert_exactly_once(fs, layout, set(names))
    assert not errors and len(tokens) == len(names)
    assert_clean(out, src, deep=True)
    # the same rows as a run with one committer and no fault
    clean = str(tmp_path / "clean")
    assert semtok(*tokenize_args(src, clean, "--files-per-unit", "2")).returncode == 0
    columns = ["id", "semantic_tokens", "acoustic_tokens"]

    def rows(lay: OutputLayout) -> list[dict]:
        return sorted(load_tokens(fs, lay, columns=columns).to_pylist(), key=lambda r: r["id"])

    assert rows(layout) == rows(the_version(fs, clean))


@pytest.mark.slow
def test_s3_outage_mid_job_never_leaves_a_silently_incomplete_output(tmp_path: Path) -> None:
    """Stop the S3 server for a few seconds while a job reads and commits through it."""
    from tests.s3_server import SeaweedS3

    server = SeaweedS3(data_dir=tmp_path / "weed")
    server.start()
    try:
        bucket = server.make_bucket("semtok-outage")
        s3 = server.filesystem()
        names = [f"clip{i:03d}.wav" for i in range(24)]
        for i, name in enumerate(names):
            s3.pipe_file(f"{bucket[5:]}/in/{name}", wav_bytes(speech_like(1.5, 16000, seed=i), 16000))
        src, out = f"{bucket}/in", f"{bucket}/out"
        env = cli_env(**server.env)
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", *tokenize_args(src, out)],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                assert time.monotonic() < deadline and proc.poll() is None
                s3.invalidate_cache()
                versions = s3.ls(f"{bucket[5:]}/out") if s3.exists(f"{bucket[5:]}/out") else []
                if versions:
                    break
                time.sleep(0.3)
            at_stop = wait_for_manifests(s3, f"{versions[0]}/_manifest", 2, proc)
            server.stop()  # reads (workers) and commits (driver) now fail
            time.sleep(5)
            server.start()
            _, stderr = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        print(
            f"\nS3 outage: job exit status {proc.returncode}, {at_stop}/{len(names)} units committed "
            "when the server stopped"
        )
        if proc.returncode != 0:  # allowed, with a clear message; the rerun must finish it
            assert "rerun the same command" in stderr, stderr[-3000:]
            done = semtok(*tokenize_args(src, out), env=env)
            assert done.returncode == 0, done.stderr[-3000:]
        s3 = server.filesystem()
        layout = the_version(s3, out)
        tokens, errors = assert_exactly_once(s3, layout, set(names))
        assert not errors, errors  # the outage turned no item into an error row
        assert_clean(out, src, storage_options=server.storage_options, deep=True)
    finally:
        server.stop()


@pytest.mark.slow
def test_incremental_rerun_encodes_only_new_inputs(tmp_path: Path, ray_local) -> None:
    from tests.conftest import local_writer
    from tests.corpus import build_tar_shards

    write_wavs(tmp_path / "files", [f"a{i}.wav" for i in range(5)])
    build_tar_shards(local_writer(tmp_path / "tars"))
    for name, per_unit in (("files", 2), ("tars", 1)):
        src, out = str(tmp_path / name), tmp_path / f"out-{name}"
        config = TokenizeConfig(
            input=src,
            output=str(out),
            files_per_unit=per_unit,
            formats=("parquet", "webdataset"),
            progress_interval_s=60,
            **TINY,
        )
        first = run_tokenize(config)
        before = digests(out)
        if name == "files":  # new names sort before, between and after the old ones
            write_wavs(tmp_path / name, ["0new.wav", "a2b.wav", "z.wav"])
            new_units, new_items = 2, 3
        else:
            extra = tmp_path / "more"
            build_tar_shards(local_writer(extra), seed=7, prefix="late")
            for shard in sorted(extra.glob("late/*.tar"))[:1]:
                shard.rename(tmp_path / name / "shard-900000.tar")
            new_units = 1
            new_items = None
        second = run_tokenize(config)
        assert second.units_planned == new_units and second.units_skipped == first.units_committed
        if new_items is not None:
            assert second.items == new_items
        after = digests(out)
        assert {k: after[k] for k in before} == before  # old outputs untouched
        assert len(after) > len(before)
        third = run_tokenize(config)
        assert third.units_planned == 0 and third.items == 0
        assert_clean(str(out), src)


def node_loss_job(src: str, out: str) -> None:
    """Subprocess body: a head (no CPUs) + 2 workers; remove the busiest worker mid-job."""
    import threading

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: loopback only
    import ray
    from ray.cluster_utils import Cluster

    loopback = {"node_ip_address": "127.0.0.1"}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **loopback}
    )
    workers = [cluster.add_node(num_cpus=2, **loopback) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    config = TokenizeConfig(
        input=src,
        output=out,
        files_per_unit=1,
        num_encoders=2,
        cpus_per_encoder=0.5,
        encode_batch_segments=4,  # many batches: the node goes while most are still to come
        read_cpus=0.5,
        ray_address=cluster.address,
        progress_interval_s=60,
        **TINY,
    )
    layout = OutputLayout.for_fingerprint(out, job_fingerprint(config))
    removed: dict[str, object] = {}

    def remove_one() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            committed = list(Path(layout.manifest_dir).glob("*.json"))
            if len(committed) >= 2:
                # a node that hosts an encode actor (Ray Data's `_MapWorker`), so the loss must
                # disrupt the job; else the busiest node
                hosts = {
                    actor["Address"]["NodeID"]
                    for actor in ray._private.state.state.actor_table(None).values()
                    if actor.get("State") == "ALIVE" and "MapWorker" in actor.get("ActorClassName", "")
                }
                free = ray._private.state.state.available_resources_per_node()
                victim = min(
                    workers,
                    key=lambda node: (
                        node.node_id not in hosts,
                        free.get(node.node_id, {}).get("CPU", 2.0),
                    ),
                )
                cluster.remove_node(victim)
                removed.update(
                    at_units=len(committed), node=victim.node_id, hosted_encoder=victim.node_id in hosts
                )
                return
            time.sleep(0.1)

    thread = threading.Thread(target=remove_one, daemon=True)
    thread.start()
    summary = run_tokenize(config)
    thread.join(5)
    print(
        "RESULT "
        + json.dumps(
            {"removed": removed, "units_committed": summary.units_committed, "items": summary.items}
        ),
        flush=True,
    )
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_worker_node_removed_mid_job(tmp_path: Path) -> None:
    """Ray Data recreates the lost encode actors, redoes their batches, rebuilds lost blocks."""
    names = [f"clip{i:03d}.wav" for i in range(24)]
    write_wavs(tmp_path / "in", names, seconds=2.0)
    src, out = str(tmp_path / "in"), str(tmp_path / "out")
    code = f"from tests.test_faults import node_loss_job; node_loss_job({src!r}, {out!r})"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=cli_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        start_new_session=True,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0])
    print(f"\nnode loss: {result}")
    assert result["removed"], "no node was removed: the job finished too fast"
    assert result["removed"]["at_units"] < len(names)
    # the loss hit the job: the node held a live encode actor (lost with it), or Ray's own messages
    # say an actor restarted or a task/object was redone
    assert result["removed"]["hosted_encoder"] or re.search(
        r"actor was restarted|node it was running on is dead|recover \d+ lost objects", done.stderr
    ), done.stderr[-3000:]
    fs, _ = open_filesystem(out)
    layout = the_version(fs, out)
    tokens, errors = assert_exactly_once(fs, layout, set(names))
    assert not errors
    assert_clean(out, src, deep=True)
