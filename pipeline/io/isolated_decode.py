"""Decode audio in a persistent child process, so one poison file cannot kill or hang a Ray worker.

A native crash in libsndfile or FFmpeg, a decompression bomb or a decode that never returns would
kill (or stall) the Ray task that runs it, and Ray Data retries such a task without bound: one bad
file would stop the whole job. `IsolatedDecoder` runs the decode function in a child interpreter
instead, reused across items, and turns each of those failures into an `AudioDecodeError` (an error
row) for that item only:

* ``decode_timeout``: no answer within ``timeout_s``; the child is killed and a new one started.
* ``decode_crashed``: the child died (the signal or exit code is in the detail).
* ``out_of_memory``: MemoryError in the child, or death by the kernel's OOM killer. The child runs
  under an address-space cap (RLIMIT_AS): ``max_memory_bytes`` more than the idle child (after
  importing the decode libraries, ``warm_imports``), so a decompression bomb fails there and not in
  the Ray worker. A native crash under the cap is ``decode_crashed``; its detail gives the peak RSS.
* bad data: the child's own AudioDecodeError passes through unchanged.

The child is a fresh interpreter (``sys.executable``), never a fork of the threaded Ray worker.
It is not started through multiprocessing's "spawn" because that re-runs the parent's ``__main__``
(in a Ray worker: Ray's default_worker.py, i.e. all of Ray) in the child. Messages travel over two
pipes: a small pickled header, then raw buffers (the encoded bytes one way, the float32 samples
the other way, pickle protocol 5 out-of-band, so neither side copies them more than once; the child
decodes the bytes in the buffer it received them into). A long item streamed to a spill file
(``spill_path=``, see audio_decoding) comes back as a small `SpilledAudio` (path and counts), never
as samples: the caller names the file, and deletes it whatever the outcome (a crash or a timeout
can leave it half written). A large item can go the other way through a file too (``spool_path=``,
or `decode_file` for a file the reader already wrote, `pipeline.io.spool`): the child maps it
read-only instead of receiving a copy.

The decode function is named by a dotted path ("module:function"), so tests can run one that
crashes on chosen inputs without this module knowing about tests. Exceptions of other types raised
by the decode function are re-raised in the parent, as an in-process call would raise them.

Cleanup: `close()` kills the child; so do ``__del__`` and an atexit hook. If the parent dies without
cleanup (SIGKILL), the child notices (parent-death signal on Linux, and a watchdog thread polling
its parent pid) and exits, so no child outlives its worker.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import json
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from pipeline.io.audio_decoding import AudioDecodeError, SpilledAudio
from pipeline.records import DecodedAudio

DEFAULT_DECODE_FN = "pipeline.io.audio_decoding:decode_audio"
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MAX_MEMORY_BYTES = 8 * 2**30
START_TIMEOUT_S = 120.0  # a fresh interpreter plus numpy/soundfile/av imports, on a loaded node

DECODE_TIMEOUT, DECODE_CRASHED, OUT_OF_MEMORY = "decode_timeout", "decode_crashed", "out_of_memory"

_LEN = struct.Struct("<Q")
_CHUNK = 1 << 20
_SPOOL_CHUNK = 1 << 26
_EXIT_OOM = 86  # the child's exit code when it could not even report a MemoryError
# Defaults for the child (the parent's own settings win; OMP threads stay as Ray set them: soxr uses
# them). Fewer BLAS threads and malloc arenas: a smaller address space under the memory cap.
_CHILD_ENV_DEFAULTS = {"OPENBLAS_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
# Imported in the child before the memory cap applies, so that the cap bounds what a decode adds and
# not the size of the libraries: the default decode function imports PyAV and, for the "official"
# resampler, torch lazily. Missing modules are skipped.
DEFAULT_WARM_IMPORTS = ("av", "torch", "codec.resample")
_BOOT = (
    "import sys, json; c = json.loads(sys.argv[1]); sys.path[:] = c['sys_path']; "
    "from pipeline.io.isolated_decode import _child_main; _child_main(c)"
)


def resolve_function(path: str) -> Callable[..., Any]:
    """ "package.module:function" (or "package.module.function") -> the function."""
    module, sep, name = path.partition(":")
    if not sep:
        module, _, name = path.rpartition(".")
    if not module or not name:
        raise ValueError(f"decode_fn {path!r}: use 'package.module:function'")
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"decode_fn {path!r} is not callable")
    return target


class _ChildGone(Exception):
    """The child closed its pipe (it died)."""


class _Timeout(Exception):
    pass


class IsolatedDecoder:
    """`decode(data, **decode_kwargs) -> DecodedAudio | SpilledAudio` in a persistent child process.

    Thread-safe (calls are serialized). ``in_process=True`` calls the decode function directly (no
    isolation, no timeout; MemoryError still becomes out_of_memory): for tests and benchmarks.
    """

    def __init__(
        self,
        *,
        decode_fn: str | None = None,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        max_memory_bytes: int | None = DEFAULT_MAX_MEMORY_BYTES,
        in_process: bool = False,
        start_timeout_s: float = START_TIMEOUT_S,
        warm_imports: tuple[str, ...] = DEFAULT_WARM_IMPORTS,
    ) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError("timeout_s must be > 0 (or None for no limit)")
        if max_memory_bytes is not None and max_memory_bytes <= 0:
            raise ValueError("max_memory_bytes must be > 0 (or None for no cap)")
        self.decode_fn = decode_fn or DEFAULT_DECODE_FN
        self.timeout_s = timeout_s
        self.max_memory_bytes = max_memory_bytes
        self.in_process = in_process
        self.start_timeout_s = start_timeout_s
        self.warm_imports = tuple(warm_imports)
        self.idle_memory: dict[str, int] = {}  # the idle child: {"vm_bytes", "rss_bytes"}
        self.starts = 0  # children started so far (restarts = starts - 1)
        self.last_start_s = 0.0  # how long the last child took to become ready
        self._fn: Callable[..., Any] | None = None
        self._proc: subprocess.Popen | None = None
        self._to_child = self._from_child = -1
        self._oom_baseline: int | None = None
        self._lock = threading.Lock()
        _LIVE.add(self)

    # --- public ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The running child's pid (None when none is running)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the child now (otherwise the first `decode` does)."""
        if self.in_process:
            return
        with self._lock:
            self._ensure_child()

    def decode(
        self, data: bytes, *, spool_path: str | None = None, **decode_kwargs: Any
    ) -> DecodedAudio | SpilledAudio:
        """`decode_fn(data, **decode_kwargs)` in the child. ``spool_path`` (a fresh local path): the
        bytes go through that file, which the child maps, instead of the pipe, so the child holds
        no copy of a large item (its pages are file-backed); the file is deleted before returning."""
        if self.in_process:
            return self._decode_here(data, decode_kwargs)
        with self._lock:
            return self._decode_isolated(data, decode_kwargs, spool_path)

    def decode_file(self, path: str, **decode_kwargs: Any) -> DecodedAudio | SpilledAudio:
        """`decode_fn` over the bytes of a local file (an item the reader spooled to disk), which
        are never read into this process: the child maps the file read-only (in process: this
        process maps it). The caller owns the file and deletes it."""
        if self.in_process:
            mapped = _map_file(path)
            try:
                return self._decode_here(mapped if mapped is not None else b"", decode_kwargs)
            finally:
                if mapped is not None:
                    try:
                        mapped.close()
                    except BufferError:  # a view of it is still referenced: the GC unmaps it
                        pass
        with self._lock:
            self._ensure_child()
            return self._exchange(b"", decode_kwargs, path)

    def close(self) -> None:
        """Kill the child (if any) and reap it. The decoder restarts one if used again."""
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        acquired = lock.acquire(timeout=30)
        try:
            self._kill()
        finally:
            if acquired:
                lock.release()

    def __del__(self) -> None:
        try:
            self._kill()
        except Exception:  # noqa: BLE001 - interpreter shutdown: best effort
            pass

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("IsolatedDecoder owns a process and cannot be pickled; create it where used")

    # --- in process -----------------------------------------------------------------------

    def _decode_here(self, data: bytes, kwargs: dict[str, Any]) -> DecodedAudio | SpilledAudio:
        if self._fn is None:
            self._fn = resolve_function(self.decode_fn)
        try:
            return self._fn(data, **kwargs)
        except MemoryError as exc:
            raise AudioDecodeError(OUT_OF_MEMORY, f"MemoryError: {exc}") from None

    # --- isolated -------------------------------------------------------------------------

    def _decode_isolated(
        self, data: bytes, kwargs: dict[str, Any], spool_path: str | None
    ) -> DecodedAudio | SpilledAudio:
        self._ensure_child()
        spool = spool_path if spool_path is not None and _spool(spool_path, data) else None
        try:
            return self._exchange(data, kwargs, spool)
        finally:
            if spool is not None:
                _unlink(spool)

    def _exchange(
        self, data: bytes, kwargs: dict[str, Any], spool: str | None
    ) -> DecodedAudio | SpilledAudio:
        self._oom_baseline = _oom_kill_count()  # per item: another process's OOM kill is not ours
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        try:
            header = pickle.dumps((len(data), kwargs, spool), protocol=5)
            _write_all(self._to_child, _LEN.pack(len(header)) + header, deadline)
            if spool is None:
                _write_all(self._to_child, memoryview(data), deadline)
            kind, payload = self._receive(deadline)
        except _Timeout:
            self._kill()
            raise AudioDecodeError(
                DECODE_TIMEOUT, f"no result within {self.timeout_s:g} s; the decode process was killed"
            ) from None
        except (_ChildGone, BrokenPipeError, ConnectionResetError):
            reason, detail = self._reap_dead_child()
            raise AudioDecodeError(reason, detail) from None
        if kind == "ok":
            return payload
        if kind == "error":
            raise AudioDecodeError(*payload)
        if kind == "oom":
            self._kill()  # native libraries may be left in a bad state by failed allocations
            raise AudioDecodeError(OUT_OF_MEMORY, payload)
        exc, text = payload
        if isinstance(exc, BaseException):
            raise exc
        raise RuntimeError(f"decode function {self.decode_fn} raised in the decode process:\n{text}")

    def _receive(self, deadline: float | None) -> tuple[str, Any]:
        header = _read_exact(self._from_child, _read_len(self._from_child, deadline), deadline)
        kind, sizes, body = pickle.loads(header)
        buffers = []
        for size in sizes:
            buf = bytearray(size)
            _read_into(self._from_child, memoryview(buf), deadline)
            buffers.append(buf)
        return kind, pickle.loads(body, buffers=buffers) if buffers else pickle.loads(body)

    def _ensure_child(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        if self._proc is not None:  # died while idle (e.g. killed from outside): start a new one
            self._kill()
        started = time.monotonic()
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        config = {
            "sys_path": [p for p in sys.path if isinstance(p, str)],
            "decode_fn": self.decode_fn,
            "max_memory_bytes": self.max_memory_bytes,
            "warm_imports": list(self.warm_imports),
            "parent_pid": os.getpid(),
            # PR_SET_PDEATHSIG fires when the spawning *thread* exits: only safe from the main thread
            "death_signal": threading.current_thread() is threading.main_thread(),
        }
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, json.dumps(config)],
                stdin=to_child_r,
                stdout=from_child_w,
                close_fds=True,
                env={**_CHILD_ENV_DEFAULTS, **os.environ},
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._proc, self._to_child, self._from_child = proc, to_child_w, from_child_r
        for fd in (to_child_w, from_child_r):
            os.set_blocking(fd, False)
            _grow_pipe(fd)
        self._oom_baseline = _oom_kill_count()
        try:
            kind, payload = self._receive(time.monotonic() + self.start_timeout_s)
        except (_ChildGone, _Timeout) as exc:
            reason, detail = self._reap_dead_child() if isinstance(exc, _ChildGone) else ("", "timeout")
            self._kill()
            raise RuntimeError(
                f"the decode process did not start ({reason or 'no answer'}: {detail})"
            ) from None
        if kind != "ready":
            self._kill()
            raise RuntimeError(f"the decode process could not load {self.decode_fn}:\n{payload}")
        self.idle_memory = dict(payload)
        self.starts += 1
        self.last_start_s = time.monotonic() - started

    def _reap_dead_child(self) -> tuple[str, str]:
        """The child closed its pipe: wait for it, say why it died, forget it."""
        proc = self._proc
        status, rusage = _wait(proc, 5.0) if proc is not None else (None, None)
        if status is None:  # closed its pipe but would not exit
            self._kill()
            return DECODE_CRASHED, "the decode process closed its pipe and was killed"
        self._forget()
        peak = rusage.ru_maxrss * 1024 if rusage is not None else 0  # Linux: KiB
        cap = self.max_memory_bytes
        where = f"peak RSS {peak / 2**20:.0f} MiB" + (
            f", memory cap {cap / 2**20:.0f} MiB above idle" if cap else ""
        )
        oom_now = _oom_kill_count()
        oom_killed = oom_now is not None and self._oom_baseline is not None and oom_now > self._oom_baseline
        self._oom_baseline = oom_now
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = _signal_name(sig)
            if sig == signal.SIGKILL and oom_killed:
                return OUT_OF_MEMORY, f"the decode process was killed by the OOM killer ({name}; {where})"
            # Other signals are crashes. A native allocation failing under the cap may also end
            # this way: the peak RSS in the detail tells (a heuristic on it misread earlier items'
            # peaks as exhaustion, so the reason only says out_of_memory on positive evidence).
            return DECODE_CRASHED, f"the decode process was killed by {name} ({where})"
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
        if code == _EXIT_OOM:
            return OUT_OF_MEMORY, f"the decode process ran out of memory ({where})"
        return DECODE_CRASHED, f"the decode process exited with code {code} ({where})"

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            try:
                proc.kill()
            except OSError:
                pass
            _wait(proc, 10.0)
        self._forget()

    def _forget(self) -> None:
        for fd in (self._to_child, self._from_child):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._proc, self._to_child, self._from_child = None, -1, -1


# --- one decoder per worker process ---------------------------------------------------------

_LIVE: weakref.WeakSet[IsolatedDecoder] = weakref.WeakSet()
_SHARED: dict[tuple, IsolatedDecoder] = {}
_SHARED_PID = os.getpid()
_SHARED_LOCK = threading.Lock()


def shared_decoder(
    *,
    decode_fn: str | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    max_memory_bytes: int | None = DEFAULT_MAX_MEMORY_BYTES,
    in_process: bool = False,
) -> IsolatedDecoder:
    """The decoder of this process for these settings: one child per worker, reused by every unit
    (Ray Data deserializes a fresh callable per task, so the decoder cannot live on the callable)."""
    global _SHARED_PID
    key = (decode_fn or DEFAULT_DECODE_FN, timeout_s, max_memory_bytes, in_process)
    with _SHARED_LOCK:
        if _SHARED_PID != os.getpid():  # a forked copy of this process: the children are not ours
            _SHARED.clear()
            _SHARED_PID = os.getpid()
        decoder = _SHARED.get(key)
        if decoder is None:
            decoder = _SHARED[key] = IsolatedDecoder(
                decode_fn=decode_fn,
                timeout_s=timeout_s,
                max_memory_bytes=max_memory_bytes,
                in_process=in_process,
            )
        return decoder


@atexit.register
def _close_all() -> None:
    for decoder in list(_LIVE):
        decoder.close()


# --- spool files: large items handed over through local disk -------------------------------


def _spool(path: str, data: bytes) -> bool:
    """Write `data` to a fresh file at `path`; False (and no file) when that fails: use the pipe."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        view = memoryview(data).cast("B")
        while view.nbytes:
            view = view[os.write(fd, view[:_SPOOL_CHUNK]) :]
    except OSError:
        os.close(fd)
        _unlink(path)
        return False
    os.close(fd)
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _map_file(path: str) -> Any:
    """The child's view of a spooled item: a read-only map (file-backed pages, not anonymous)."""
    import mmap

    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        return mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) if size else None


# --- pipe I/O (parent side: non-blocking fds with deadlines) --------------------------------


def _wait_fd(fd: int, events: int, deadline: float | None) -> None:
    poller = select.poll()
    poller.register(fd, events)
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if poller.poll(None if timeout is None else int(timeout * 1000) + 1):
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise _Timeout()


def _write_all(fd: int, data: bytes | memoryview, deadline: float | None) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        try:
            written = os.write(fd, view[:_CHUNK])
        except BlockingIOError:
            _wait_fd(fd, select.POLLOUT, deadline)
            continue
        view = view[written:]


def _read_into(fd: int, view: memoryview, deadline: float | None) -> None:
    while view.nbytes:
        try:
            got = os.readv(fd, [view])
        except BlockingIOError:
            _wait_fd(fd, select.POLLIN, deadline)
            continue
        if got == 0:
            raise _ChildGone()
        view = view[got:]


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    buf = bytearray(size)
    _read_into(fd, memoryview(buf), deadline)
    return bytes(buf)


def _read_len(fd: int, deadline: float | None) -> int:
    return _LEN.unpack(_read_exact(fd, _LEN.size, deadline))[0]


def _grow_pipe(fd: int) -> None:
    """1 MiB pipe buffers (Linux; default 64 KiB): fewer wake-ups per large item."""
    import fcntl

    setsz = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsz is not None:
        try:
            fcntl.fcntl(fd, setsz, _CHUNK)
        except OSError:
            pass


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int | None, Any]:
    """Reap `proc` (os.wait4, for its peak memory): (raw wait status, rusage), or (None, None)."""
    end = time.monotonic() + timeout
    while True:
        try:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:  # already reaped (or SIGCHLD ignored): status unknown
            proc.returncode = proc.returncode if proc.returncode is not None else -1
            return 0, None
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return status, rusage
        if time.monotonic() >= end:
            return None, None
        time.sleep(0.01)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _oom_kill_count() -> int | None:
    """OOM kills so far, from this cgroup (v2 or v1) and the kernel: a SIGKILLed child while this
    grows was the OOM killer's victim. None where none of these files exist."""
    total, found = 0, False
    paths = ["/proc/vmstat", "/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"]
    for path in paths:
        try:
            with open(path) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        total, found = total + int(value), True
        except (OSError, ValueError):
            continue
    return total if found else None


# --- child side -----------------------------------------------------------------------------


def _child_main(config: dict[str, Any]) -> None:
    """Entry point of the decode process: serve requests on fd 0, answer on fd 1, until EOF."""
    rfd, wfd = os.dup(0), os.dup(1)
    os.dup2(2, 1)  # stray prints from libraries go to stderr, never into the protocol
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent; it closes us
    _watch_parent(int(config["parent_pid"]), bool(config.get("death_signal")))
    try:
        fn = resolve_function(config["decode_fn"])
        for name in config.get("warm_imports") or ():
            try:
                importlib.import_module(name)
            except ImportError:
                pass
        idle = _idle_memory()
        cap = config.get("max_memory_bytes")
        if cap:
            import resource

            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            limit = idle["vm_bytes"] + int(cap)
            limit = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        _send(wfd, "fatal", traceback.format_exc())
        return
    _send(wfd, "ready", idle)
    while True:
        try:
            size = _LEN.unpack(_child_read(rfd, _LEN.size))[0]
        except EOFError:
            return
        data_len, kwargs, spool = pickle.loads(_child_read(rfd, size))
        mapped = None
        try:
            if spool is not None:
                mapped = _map_file(spool)
                data = mapped if mapped is not None else b""
            else:  # decoded in place: no second copy of a large item
                data = _child_read_buffer(rfd, data_len)
            result = fn(data, **kwargs)
            del data
        except MemoryError as exc:
            message = f"MemoryError in the decode process: {exc}"[:500]
            del exc  # drop the traceback's frames (and their arrays)
            data = result = None
            _send_or_exit(wfd, "oom", message, _EXIT_OOM)
            continue
        except Exception as exc:  # noqa: BLE001
            reason, detail = getattr(exc, "reason", None), getattr(exc, "detail", None)
            if isinstance(reason, str) and isinstance(detail, str):
                _send_or_exit(wfd, "error", (reason, detail), 1)
            else:
                _send_or_exit(wfd, "raise", (_picklable(exc), traceback.format_exc()), 1)
            continue
        finally:
            data = None
            if mapped is not None:
                try:
                    mapped.close()
                except BufferError:  # a view of it is still referenced: the GC unmaps it
                    pass
        _send_or_exit(wfd, "ok", result, 1)
        result = None


def _idle_memory() -> dict[str, int]:
    """This process's address space and resident memory now (Linux /proc; zeros elsewhere)."""
    found = {"vm_bytes": 0, "rss_bytes": 0}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmSize", "VmRSS"):
                    found["vm_bytes" if key == "VmSize" else "rss_bytes"] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return found


def _picklable(exc: BaseException) -> BaseException | None:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return None


def _send(fd: int, kind: str, payload: Any) -> None:
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(payload, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    header = pickle.dumps((kind, [r.nbytes for r in raws], body), protocol=5)
    _child_write(fd, _LEN.pack(len(header)) + header)
    for raw in raws:
        _child_write(fd, raw)


def _send_or_exit(fd: int, kind: str, payload: Any, code: int) -> None:
    try:
        _send(fd, kind, payload)
    except MemoryError:
        os._exit(_EXIT_OOM)
    except BaseException:  # noqa: BLE001 - the parent is gone or the pipe broke
        os._exit(code)


def _child_read(fd: int, size: int) -> bytes:
    return bytes(_child_read_buffer(fd, size))


def _child_read_buffer(fd: int, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    while view.nbytes:
        got = os.readv(fd, [view])
        if got == 0:
            raise EOFError
        view = view[got:]
    return buf


def _child_write(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[os.write(fd, view[:_CHUNK]) :]


def _watch_parent(parent_pid: int, death_signal: bool) -> None:
    """Exit when the parent dies, even if it could not close us (SIGKILL, native crash)."""
    if death_signal and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(0)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
