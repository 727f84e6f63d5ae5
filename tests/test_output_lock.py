"""The output lease: one writer per dataset version, on local files, memory and a real S3 server."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time

import pytest

from pipeline.dataset.commit import cleanup_tmp
from pipeline.dataset.layout import OutputLayout, new_attempt_id
from pipeline.dataset.lease import (
    LeaseLost,
    OutputBusy,
    acquire_lease,
    read_lease,
)


@pytest.fixture
def layout(store):
    return OutputLayout(store[1], "semanticodec-r50-v16384-0123456789")


def test_second_acquire_fails_while_held_then_works_after_release(store, layout):
    fs, _ = store
    first = acquire_lease(fs, layout, "run-a", command="semtok tokenize in --out out")
    try:
        assert first.held
        record = json.loads(fs.cat_file(layout.lock_path))
        assert record["run_id"] == "run-a" and record["command"] == "semtok tokenize in --out out"
        assert {"host", "pid", "acquired_at", "renewed_at", "ttl_s"} <= set(record)
        with pytest.raises(OutputBusy) as busy:
            acquire_lease(fs, layout, "run-b")
        message = str(busy.value)
        assert "\n" not in message
        assert f"output {layout.version_url} is being written by run run-a (" in message
        assert f"remove {layout.lock_path}" in message and "for the lease to expire" in message
        holder = read_lease(fs, layout)
        assert holder is not None and holder.live and holder.run_id == "run-a"
    finally:
        first.release()
    assert not fs.exists(layout.lock_path)
    assert read_lease(fs, layout) is None
    with acquire_lease(fs, layout, "run-b") as second:
        assert second.held
    assert not second.held and not fs.exists(layout.lock_path)
    first.release()  # releasing twice is harmless


def test_stale_lease_is_taken_over_with_a_warning(store, layout, caplog):
    fs, _ = store
    dead = acquire_lease(fs, layout, "run-dead", ttl_s=0.5, heartbeat=False)
    time.sleep(0.8)  # no renewal for longer than its ttl
    assert not dead.held
    with caplog.at_level(logging.WARNING, logger="pipeline.dataset.lease"):
        alive = acquire_lease(fs, layout, "run-alive", heartbeat=False)
    try:
        assert alive.took_over_from is not None and alive.took_over_from.run_id == "run-dead"
        assert any(
            "taking over the stale lease" in r.getMessage() and "run-dead" in r.getMessage()
            for r in caplog.records
        )
        assert read_lease(fs, layout).run_id == "run-alive"
        with pytest.raises(LeaseLost, match="taken over"):
            dead.renew()  # the old holder learns it lost the lease ...
        with pytest.raises(LeaseLost):
            dead.check()
        dead.release()  # ... and its release does not remove the new holder's lock
        assert read_lease(fs, layout).run_id == "run-alive"
    finally:
        alive.release()


def test_heartbeat_keeps_a_short_lease_alive(store, layout):
    fs, _ = store
    with acquire_lease(fs, layout, "run-a", ttl_s=1.5) as lease:
        time.sleep(3.5)  # more than twice the ttl: only renewals keep it (margin for a loaded S3)
        assert lease.held
        lease.check()
        with pytest.raises(OutputBusy):
            acquire_lease(fs, layout, "run-b", heartbeat=False)


def test_racing_acquires_have_exactly_one_winner(store, layout):
    fs, _ = store
    n = 6
    barrier = threading.Barrier(n)
    won, busy, failed = [], [], []

    def race(i: int) -> None:
        barrier.wait()
        try:
            won.append(acquire_lease(fs, layout, f"run-{i}", heartbeat=False))
        except OutputBusy:
            busy.append(i)
        except Exception as error:  # noqa: BLE001 - reported below
            failed.append(error)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failed, failed
    assert len(won) == 1 and len(busy) == n - 1
    assert read_lease(fs, layout).run_id == won[0].run_id
    won[0].release()


def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    import fsspec

    fs = fsspec.filesystem("file")
    layout = OutputLayout(str(tmp_path), "v1")
    lease = acquire_lease(fs, layout, "run-old", heartbeat=False)
    proc = subprocess.Popen(["true"])
    proc.wait()
    record = json.loads(fs.cat_file(layout.lock_path))
    record["pid"] = proc.pid  # as if a driver killed a moment ago had written it
    fs.pipe_file(layout.lock_path, json.dumps(record).encode())
    with acquire_lease(fs, layout, "run-new", heartbeat=False) as new:
        assert "is gone" in new.took_over_from.stale_reason
    lease.release()


def test_unreadable_lock_counts_as_held_until_it_is_old(tmp_path):
    import fsspec

    fs = fsspec.filesystem("file")
    layout = OutputLayout(str(tmp_path), "v1")
    fs.makedirs(layout.version_url, exist_ok=True)
    fs.pipe_file(layout.lock_path, b"{half a rec")
    with pytest.raises(OutputBusy, match="unknown run"):
        acquire_lease(fs, layout, "run-a", heartbeat=False)
    with acquire_lease(fs, layout, "run-a", heartbeat=False, ttl_s=0.0001) as lease:
        assert lease.took_over_from is not None


def test_s3_uses_conditional_writes_and_the_fallback_works(s3_server, s3_bucket):
    fs = s3_server.filesystem()
    layout = OutputLayout(s3_bucket, "v1")
    with acquire_lease(fs, layout, "run-a", heartbeat=False) as lease:
        assert lease.backend.kind == "s3-conditional"  # SeaweedFS honours If-None-Match / If-Match
    fallback = OutputLayout(s3_bucket, "v2")
    first = acquire_lease(fs, fallback, "run-a", heartbeat=False, conditional=False, settle_s=0.1)
    assert first.backend.kind == "read-back"
    with pytest.raises(OutputBusy):
        acquire_lease(fs, fallback, "run-b", heartbeat=False, conditional=False, settle_s=0.1)
    first.renew()
    first.release()
    with acquire_lease(fs, fallback, "run-b", heartbeat=False, conditional=False, settle_s=0.1):
        pass


def test_cleanup_keeps_a_live_writers_attempts(tmp_path):
    import fsspec

    fs = fsspec.filesystem("file")
    layout = OutputLayout(str(tmp_path), "v1")

    def attempt(attempt_id: str) -> str:
        path = layout.tmp_dir(attempt_id)
        fs.makedirs(path, exist_ok=True)
        fs.pipe_file(f"{path}/part.tmp", b"x")
        return path

    other = acquire_lease(fs, layout, "run-writer", heartbeat=False)
    live = attempt(new_attempt_id("run-writer"))
    crashed = attempt(new_attempt_id("run-crashed"))
    anonymous = attempt(new_attempt_id())
    removed = cleanup_tmp(fs, layout)  # the caller has no lease: run-writer is writing
    assert [fs._strip_protocol(p) for p in removed] == [fs._strip_protocol(crashed)]
    assert fs.exists(live) and fs.exists(anonymous)
    other.release()
    with acquire_lease(fs, layout, "run-next", heartbeat=False) as mine:
        removed = cleanup_tmp(fs, layout, lease=mine)  # holding the lease: all leftovers go
    assert sorted(fs._strip_protocol(p) for p in removed) == sorted(
        fs._strip_protocol(p) for p in (live, anonymous)
    )
