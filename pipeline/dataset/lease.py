"""One writer per dataset version at a time: the output lease, `<version>/_lock.json`.

Why: two runs writing one version at once would each redo the other's units, interleave their run
records, and the end-of-run cleanup of one would delete the other's in-flight temporaries. A run
takes the lease before it commits anything and renews it (a heartbeat thread, every ttl/3) while
it works; a second run finds it held and stops with `OutputBusy`, one line saying by whom and what
to do. A lease not renewed for its ttl (its run died), or whose process on this very host is
gone, is stale and the next run takes it over, saying so in a warning.

How the lease is taken atomically, per store:
- local disks: the record is written to a temporary file and hard-linked to `_lock.json` (a link
  fails when the name exists, and readers never see a half-written lock); file systems without
  hard links get O_CREAT|O_EXCL. Renewal, takeover and release compare-and-swap under a short
  guard file (`_lock.json.guard`, itself O_EXCL).
- S3 (s3fs): conditional PUTs, `If-None-Match: *` to create, `If-Match: <etag>` to renew or take
  over, `DeleteObject If-Match` to release. AWS S3 and SeaweedFS support them; whether an endpoint
  does is probed once per bucket (a store that silently ignored the header would let two writers
  in), and a store without them gets the fallback below.
- fsspec memory (one process): a process-wide mutex.
- any other store, or S3 without conditional writes (FALLBACK, best effort): check absence,
  write, wait `settle_s`, read back and keep the lease only if the record read back is ours
  (its random nonce). Two runs that both find the name free see the later write when they read
  back, so the earlier one backs off; both could hold it only if one took longer than `settle_s`
  between its check and its write.

Takeover of a stale lease is itself a compare-and-swap against the stale record (If-Match of its
etag on S3, the guard file locally), so two runs finding one stale lease cannot both take it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.memory import MemoryFileSystem

from pipeline.dataset.layout import OutputLayout, check_safe_id, is_local
from pipeline.io.storage import redact_text, redact_uri

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TTL_S",
    "LeaseHolder",
    "LeaseLost",
    "OutputBusy",
    "OutputLease",
    "acquire_lease",
    "read_lease",
]

DEFAULT_TTL_S = 120.0
SETTLE_S = 1.0  # read-back delay of the fallback (stores without conditional writes)
GUARD_STALE_S = 30.0  # a local guard file older than this was left by a crash
GUARD_WAIT_S = 10.0
ACQUIRE_TRIES = 5


class OutputBusy(RuntimeError):
    """Another live run holds the lease of the output version."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (it was not renewed in time) or released."""


def _now_iso(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


# --- lock stores ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Read:
    data: bytes
    token: Any  # what a compare-and-swap compares: the bytes, or the S3 etag
    mtime: float | None


class _Backend:
    """create / replace / delete return the new token (or True), None/False when they lost."""

    kind = "?"

    def read(self) -> _Read | None:
        raise NotImplementedError

    def create(self, data: bytes) -> Any:
        raise NotImplementedError

    def replace(self, data: bytes, token: Any) -> Any:
        raise NotImplementedError

    def delete(self, token: Any) -> bool:
        raise NotImplementedError


class _LocalBackend(_Backend):
    kind = "local"

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        self.path = fs._strip_protocol(path)
        self.guard = self.path + ".guard"

    def read(self) -> _Read | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
                mtime = os.fstat(handle.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return _Read(data, data, mtime)

    def _write_tmp(self, data: bytes) -> str:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return tmp

    def create(self, data: bytes) -> Any:
        tmp = self._write_tmp(data)
        try:
            os.link(tmp, self.path)
            return data
        except FileExistsError:
            return None
        except OSError:  # no hard links here (some network/FUSE file systems): O_EXCL
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            return data
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        deadline = time.monotonic() + GUARD_WAIT_S
        while True:
            try:
                os.close(os.open(self.guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                break
            except FileExistsError:
                try:
                    age = time.time() - os.stat(self.guard).st_mtime
                except FileNotFoundError:
                    continue
                if age > GUARD_STALE_S:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.guard)
                    continue
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.guard} held for more than {GUARD_WAIT_S} s") from None
                time.sleep(0.01)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.guard)

    def replace(self, data: bytes, token: Any) -> Any:
        with self._guarded():
            current = self.read()
            if current is None or current.token != token:
                return None
            tmp = self._write_tmp(data)
            try:
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            return data

    def delete(self, token: Any) -> bool:
        with self._guarded():
            current = self.read()
            if current is None or current.token != token:
                return False
            os.unlink(self.path)
            return True


_MEMORY_MUTEX = threading.Lock()


class _MemoryBackend(_Backend):
    """fsspec's memory store lives in this process: a mutex makes check-and-set atomic."""

    kind = "memory"

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        self.fs, self.path = fs, path

    def _read(self) -> _Read | None:
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return _Read(data, data, None)

    def read(self) -> _Read | None:
        with _MEMORY_MUTEX:
            return self._read()

    def create(self, data: bytes) -> Any:
        with _MEMORY_MUTEX:
            if self._read() is not None:
                return None
            self.fs.pipe_file(self.path, data)
            return data

    def replace(self, data: bytes, token: Any) -> Any:
        with _MEMORY_MUTEX:
            current = self._read()
            if current is None or current.token != token:
                return None
            self.fs.pipe_file(self.path, data)
            return data

    def delete(self, token: Any) -> bool:
        with _MEMORY_MUTEX:
            current = self._read()
            if current is None or current.token != token:
                return False
            self.fs.rm_file(self.path)
            return True


def _precondition_failed(error: BaseException) -> bool:
    """S3 said a condition did not hold (412), or a concurrent conditional write won (409)."""
    for exc in (error, error.__cause__, error.__context__):
        if exc is None:
            continue
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
            return True
        text = str(exc).lower()
        if "pre-condition" in text or "precondition" in text or "conditionalrequestconflict" in text:
            return True
    return False


def _not_found(error: BaseException) -> bool:
    if isinstance(error, FileNotFoundError):
        return True
    code = str(getattr(error.__cause__, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound")


def _mtime_of(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, dt.datetime):
            return value.timestamp()
    return None


class _S3Backend(_Backend):
    """Conditional PUT/DELETE through s3fs (If-None-Match / If-Match)."""

    kind = "s3-conditional"

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        self.fs = fs
        self.path = fs._strip_protocol(path)
        self.bucket, self.key, _ = fs.split_path(path)

    def read(self) -> _Read | None:
        # info first, then the body: the body is at least as new as the etag, so a swap against
        # the etag can only succeed when nothing changed since (then the body is that version).
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(self.path)
        try:
            info = self.fs.info(self.path)
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return _Read(data, info.get("ETag"), _mtime_of(info))

    def _put(self, data: bytes, **condition: str) -> Any:
        try:
            response = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=data, **condition)
        except Exception as error:
            if _precondition_failed(error) or ("IfMatch" in condition and _not_found(error)):
                return None
            raise
        finally:
            with contextlib.suppress(Exception):
                self.fs.invalidate_cache(self.path)
        return response.get("ETag") or True

    def create(self, data: bytes) -> Any:
        return self._put(data, IfNoneMatch="*")

    def replace(self, data: bytes, token: Any) -> Any:
        if not token:
            return None
        return self._put(data, IfMatch=str(token))

    def delete(self, token: Any) -> bool:
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=str(token))
        except Exception as error:
            if _precondition_failed(error) or _not_found(error):
                return False
            # A store without conditional deletes: compare, then delete (a tiny window).
            current = self.read()
            if current is None or current.token != token:
                return False
            self.fs.rm_file(self.path)
        finally:
            with contextlib.suppress(Exception):
                self.fs.invalidate_cache(self.path)
        return True


class _ReadBackBackend(_Backend):
    """FALLBACK for stores without an atomic create: write, wait, read back (see module doc)."""

    kind = "read-back"

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, settle_s: float) -> None:
        self.fs, self.path, self.settle_s = fs, path, settle_s

    def read(self) -> _Read | None:
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(self.path)
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        mtime = None
        with contextlib.suppress(Exception):
            mtime = _mtime_of(self.fs.info(self.path))
        return _Read(data, data, mtime)

    def _write_and_check(self, data: bytes) -> Any:
        self.fs.pipe_file(self.path, data)
        time.sleep(self.settle_s)
        current = self.read()
        return data if current is not None and current.data == data else None

    def create(self, data: bytes) -> Any:
        if self.read() is not None:
            return None
        return self._write_and_check(data)

    def replace(self, data: bytes, token: Any) -> Any:
        current = self.read()
        if current is None or current.token != token:
            return None
        return self._write_and_check(data)

    def delete(self, token: Any) -> bool:
        current = self.read()
        if current is None or current.token != token:
            return False
        self.fs.rm_file(self.path)
        return True


_CONDITIONAL_SUPPORT: dict[tuple[str, str], bool] = {}
_PROBE_MUTEX = threading.Lock()


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    return hasattr(fs, "call_s3") and hasattr(fs, "split_path")


def _s3_conditional_writes(fs: fsspec.AbstractFileSystem, lock_path: str) -> bool:
    """Does this endpoint honour If-None-Match on PUT? Probed once per (endpoint, bucket): a
    fresh object is written twice with the condition; the second write must be refused."""
    bucket, key, _ = fs.split_path(lock_path)
    endpoint = getattr(fs, "endpoint_url", None) or (getattr(fs, "client_kwargs", None) or {}).get(
        "endpoint_url"
    )
    cache_key = (str(endpoint), bucket)
    with _PROBE_MUTEX:
        if cache_key in _CONDITIONAL_SUPPORT:
            return _CONDITIONAL_SUPPORT[cache_key]
        probe = f"{key}.probe-{uuid.uuid4().hex}"
        supported = False
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=probe, Body=b"probe", IfNoneMatch="*")
            try:
                fs.call_s3("put_object", Bucket=bucket, Key=probe, Body=b"again", IfNoneMatch="*")
            except Exception as error:  # noqa: BLE001 - classified
                supported = _precondition_failed(error)
        except Exception as error:  # noqa: BLE001 - the store refuses the header itself
            log.info("S3 endpoint %s: no conditional writes (%s)", endpoint, type(error).__name__)
        finally:
            with contextlib.suppress(Exception):
                fs.call_s3("delete_object", Bucket=bucket, Key=probe)
        if not supported:
            log.warning(
                "S3 endpoint %s bucket %s does not support conditional writes (If-None-Match): the "
                "output lease falls back to write + read-back, which is best effort",
                endpoint,
                bucket,
            )
        _CONDITIONAL_SUPPORT[cache_key] = supported
        return supported


def _backend_for(
    fs: fsspec.AbstractFileSystem, path: str, *, conditional: bool | None, settle_s: float
) -> _Backend:
    if is_local(fs):
        return _LocalBackend(fs, path)
    if isinstance(fs, MemoryFileSystem):
        return _MemoryBackend(fs, path)
    if _is_s3(fs) and conditional is not False:
        if conditional or _s3_conditional_writes(fs, path):
            return _S3Backend(fs, path)
    return _ReadBackBackend(fs, path, settle_s)


# --- the lease --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds (or last held) a version's lease, as read from `_lock.json`."""

    run_id: str | None
    host: str | None
    pid: int | None
    command: str | None
    acquired_at: str | None
    renewed_at: str | None
    age_s: float | None  # since the last renewal
    ttl_s: float
    stale_reason: str | None  # why it may be taken over; None while it is live
    record: dict[str, Any]

    @property
    def live(self) -> bool:
        return self.stale_reason is None

    def describe(self) -> str:
        if not self.run_id:
            return "an unknown run (unreadable lock record)"
        return (
            f"run {self.run_id} ({self.host or '?'}, pid {self.pid if self.pid is not None else '?'}, "
            f"since {self.acquired_at or '?'})"
        )


def _holder(found: _Read, default_ttl_s: float, now: float) -> LeaseHolder:
    try:
        record = json.loads(found.data)
        if not isinstance(record, dict):
            raise ValueError("not an object")
    except ValueError:
        record = {}
    ttl = record.get("ttl_s")
    ttl_s = float(ttl) if isinstance(ttl, (int, float)) and ttl > 0 else default_ttl_s
    renewed = record.get("renewed_unix")
    when = float(renewed) if isinstance(renewed, (int, float)) else found.mtime
    age = None if when is None else max(0.0, now - when)
    pid = record.get("pid") if isinstance(record.get("pid"), int) else None
    host = record.get("host") if isinstance(record.get("host"), str) else None
    stale = None
    if not record and age is None:
        stale = "its lock record is unreadable"
    elif age is not None and age > ttl_s:
        stale = f"last renewed {age:.0f} s ago, more than its ttl of {ttl_s:.0f} s"
    elif host == socket.gethostname() and pid is not None and not _pid_alive(pid):
        stale = f"its process {pid} on this host ({host}) is gone"
    return LeaseHolder(
        run_id=record.get("run_id") or None,
        host=host,
        pid=pid,
        command=record.get("command"),
        acquired_at=record.get("acquired_at"),
        renewed_at=record.get("renewed_at"),
        age_s=age,
        ttl_s=ttl_s,
        stale_reason=stale,
        record=record,
    )


def read_lease(
    fs: fsspec.AbstractFileSystem, layout: OutputLayout, *, default_ttl_s: float = DEFAULT_TTL_S
) -> LeaseHolder | None:
    """The version's lease holder (live or stale), or None when nobody holds it. Read only."""
    backend = _backend_for(fs, layout.lock_path, conditional=False, settle_s=0.0)
    found = backend.read()
    return None if found is None else _holder(found, default_ttl_s, time.time())


def busy_message(layout: OutputLayout, holder: LeaseHolder) -> str:
    """The one line a run refused by a live lease prints."""
    age = holder.age_s or 0.0
    wait = max(1, math.ceil(holder.ttl_s - age))
    return (
        f"output {redact_uri(layout.version_url)} is being written by {holder.describe()}; wait for "
        f"it, or if it is dead remove {redact_uri(layout.lock_path)} / wait {wait} s for the lease "
        "to expire"
    )


class OutputLease:
    """The lease of one output version held by this run; a context manager (release on exit).

    Made by `acquire_lease`. `renew()` is the heartbeat (a background thread calls it every ttl/3
    unless `heartbeat=False`); `check()` raises `LeaseLost` once the lease may no longer be ours,
    cheap enough to call before every commit; `release()` removes the lock if it is still ours.
    """

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        layout: OutputLayout,
        run_id: str,
        *,
        ttl_s: float,
        command: str,
        backend: _Backend,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.fs, self.layout = fs, layout
        self.run_id = check_safe_id(run_id, "run id")
        self.ttl_s = float(ttl_s)
        self.command = redact_text(command)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.nonce = uuid.uuid4().hex
        self.backend = backend
        self.acquired_unix = 0.0
        self.renewed_unix = 0.0
        self.took_over_from: LeaseHolder | None = None
        self._token: Any = None
        self._lost: str | None = None
        self._released = False
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        return self.layout.lock_path

    def _record(self, now: float) -> bytes:
        record = {
            "run_id": self.run_id,
            "host": self.host,
            "pid": self.pid,
            "command": self.command,
            "output": redact_uri(self.layout.version_url),
            "acquired_at": _now_iso(self.acquired_unix or now),
            "acquired_unix": self.acquired_unix or now,
            "renewed_at": _now_iso(now),
            "renewed_unix": now,
            "ttl_s": self.ttl_s,
            "nonce": self.nonce,
        }
        return (json.dumps(record, sort_keys=True, indent=1) + "\n").encode("utf-8")

    def _acquire(self) -> None:
        for _ in range(ACQUIRE_TRIES):
            now = time.time()
            self.acquired_unix = now
            token = self.backend.create(self._record(now))
            if token is not None:
                self._token, self.renewed_unix = token, now
                return
            found = self.backend.read()
            if found is None:
                continue  # released in between: try again
            holder = _holder(found, self.ttl_s, time.time())
            if holder.record.get("nonce") == self.nonce:  # a read-back race we won after all
                self._token, self.renewed_unix = found.token, now
                return
            if holder.live:
                raise OutputBusy(busy_message(self.layout, holder))
            now = time.time()
            self.acquired_unix = now
            token = self.backend.replace(self._record(now), found.token)
            if token is not None:
                self._token, self.renewed_unix = token, now
                self.took_over_from = holder
                log.warning(
                    "taking over the stale lease of %s from %s: %s",
                    redact_uri(self.layout.version_url),
                    holder.describe(),
                    holder.stale_reason,
                )
                return
        raise OutputBusy(
            f"output {redact_uri(self.layout.version_url)}: could not take its lease "
            f"{redact_uri(self.path)} after {ACQUIRE_TRIES} tries (other runs keep changing it)"
        )

    @property
    def held(self) -> bool:
        """Ours, not lost, and renewed within the ttl (otherwise another run may take it)."""
        return (
            not self._released
            and self._lost is None
            and self._token is not None
            and time.time() - self.renewed_unix <= self.ttl_s
        )

    def check(self) -> None:
        """Raise `LeaseLost` unless the lease is still held (no I/O)."""
        if self.held:
            return
        if self._released:
            raise LeaseLost(f"the lease of {redact_uri(self.layout.version_url)} was released")
        if self._lost:
            raise LeaseLost(self._lost)
        raise LeaseLost(
            f"the lease of {redact_uri(self.layout.version_url)} was not renewed for "
            f"{time.time() - self.renewed_unix:.0f} s (ttl {self.ttl_s:.0f} s): another run may own it"
        )

    def renew(self) -> None:
        """Heartbeat: rewrite the record with a new renewal time, if it is still ours."""
        with self._mutex:
            if self._released:
                raise LeaseLost(f"the lease of {redact_uri(self.layout.version_url)} was released")
            if self._lost:
                raise LeaseLost(self._lost)
            now = time.time()
            token = self.backend.replace(self._record(now), self._token)
            if token is None:
                found = self.backend.read()
                holder = None if found is None else _holder(found, self.ttl_s, now)
                if found is not None and holder is not None and holder.record.get("nonce") == self.nonce:
                    # still ours (an earlier write landed but its answer was lost): adopt it
                    self._token = found.token
                    token = self.backend.replace(self._record(now), self._token)
                    if token is not None:
                        self._token, self.renewed_unix = token, now
                        return
                by = f"by {holder.describe()}" if holder is not None else "(the lock is gone)"
                self._lost = (
                    f"the lease of {redact_uri(self.layout.version_url)} was taken over {by}: "
                    "this run must stop writing"
                )
                raise LeaseLost(self._lost)
            self._token, self.renewed_unix = token, now

    def start_heartbeat(self) -> None:
        """Renew every ttl/3 in a daemon thread until release (or the lease is lost)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        interval = self.ttl_s / 3
        while not self._stop.wait(interval):
            try:
                self.renew()
            except LeaseLost as error:
                if not self._released:
                    log.error("%s", error)
                return
            except Exception as error:  # noqa: BLE001 - transient store trouble: next beat retries
                log.warning(
                    "could not renew the output lease (will retry): %s: %s",
                    type(error).__name__,
                    redact_text(str(error))[:300],
                )

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours; safe to repeat."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        with self._mutex:
            if self._released:
                return
            self._released = True
            if self._lost is None and self._token is not None:
                try:
                    self.backend.delete(self._token)
                except Exception as error:  # noqa: BLE001 - it expires by itself
                    log.warning(
                        "could not remove the output lease %s (it expires in %.0f s): %s",
                        redact_uri(self.path),
                        self.ttl_s,
                        type(error).__name__,
                    )

    def __enter__(self) -> OutputLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"OutputLease({redact_uri(self.layout.version_url)!r}, run {self.run_id}, held={self.held})"


def acquire_lease(
    fs: fsspec.AbstractFileSystem,
    layout: OutputLayout,
    run_id: str,
    *,
    ttl_s: float = DEFAULT_TTL_S,
    command: str = "",
    heartbeat: bool = True,
    conditional: bool | None = None,
    settle_s: float = SETTLE_S,
) -> OutputLease:
    """Take the writer lease of `layout`'s version for `run_id`, or raise `OutputBusy`.

    A stale lease (not renewed for its ttl, or its process on this host gone) is taken over with a
    warning (`lease.took_over_from` says whose it was). `heartbeat` starts the renewal thread.
    `conditional`: None probes S3 for conditional writes, False forces the read-back fallback
    (tests), True trusts the store. Use as `with acquire_lease(...) as lease:`.
    """
    backend = _backend_for(fs, layout.lock_path, conditional=conditional, settle_s=settle_s)
    lease = OutputLease(fs, layout, run_id, ttl_s=ttl_s, command=command, backend=backend)
    lease._acquire()
    if heartbeat:
        lease.start_heartbeat()
    return lease
