"""Big input items copied to local disk in bounded chunks, so no worker holds one whole in memory.

A 3-hour FLAC is over a GiB of encoded bytes; read whole (``cat_file``, ``extractfile().read()``)
it would sit in the worker's memory next to everything else. The reader (`pipeline.io.sources`)
instead copies an item of ``Spooler.min_bytes`` or more, in ``CHUNK`` pieces, to a fresh file in
the spooler's local folder, and hands that file's path on (`SourceItem.path`); the decode process
maps it read-only (file-backed pages, reclaimable). The copy stays within the read policy: it stops
past the item's byte budget and when its time is up (``cancel``).

The spooler owns its files: `release_all` deletes every file it made, and the reader calls it as
soon as the consumer moves past an item, drops it, or stops; a copy that fails deletes its own
partial file. File names start with the worker's pid, so the files of a worker that died (a
SIGKILL gives no chance to clean up) are deleted by the next worker's sweep of the folder
(`pipeline.io.spill_files.sweep_spill_dir`).
"""

from __future__ import annotations

import io
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from pipeline.io.spill_files import scratch_path

CHUNK = 8 * 2**20  # bytes per read: the most of an item the copy holds at a time
SPOOL_SUFFIX = ".in"
DEFAULT_SPOOL_MIN_BYTES = 64 * 2**20  # items this big or bigger are copied to a local file


class SpoolCancelled(Exception):
    """The copy was called off (its time ran out): the partial file is gone."""


class SpoolTooLarge(Exception):
    """The stream held more than the copy's byte budget (a size that grew after it was listed)."""


class SpoolWriteError(Exception):
    """The local file could not be written (disk full, folder missing): the worker's trouble, not
    the item's; `reason` is the error row's (the same as a spill file that cannot be written)."""

    reason = "spill_failed"

    def __init__(self, path: str, exc: OSError | str) -> None:
        why = exc if isinstance(exc, str) else exc.strerror or str(exc)
        self.detail = f"spool file {path}: {why}"
        super().__init__(self.detail)


@dataclass(frozen=True)
class Spooled:
    """An item's encoded bytes in a local file (the spooler deletes it)."""

    path: str
    size: int


class Spooler:
    """Fresh local files for big items in ``folder``, deleted by `release_all`.

    ``min_bytes``: items of this size or more are spooled; smaller ones are read into memory (faster).
    """

    def __init__(self, folder: str, min_bytes: int) -> None:
        if min_bytes < 0:
            raise ValueError(f"min_bytes must be >= 0, got {min_bytes}")
        self.folder = folder
        self.min_bytes = int(min_bytes)
        self._live: set[str] = set()
        self._lock = threading.Lock()
        self.spooled = 0  # items copied so far (for stats and tests)

    def wants(self, size: int | None) -> bool:
        """Whether an item of `size` bytes (None: unknown) goes to a file."""
        return size is not None and int(size) >= self.min_bytes

    def new_path(self) -> str:
        """A fresh file name in the folder (created on first use), registered for `release_all`."""
        os.makedirs(self.folder, exist_ok=True)
        path = scratch_path(self.folder, SPOOL_SUFFIX)
        with self._lock:
            self._live.add(path)
        return path

    def release(self, path: str) -> None:
        """Delete one file of this spooler (no error if it is gone already)."""
        with self._lock:
            self._live.discard(path)
        _unlink(path)

    def release_all(self) -> int:
        """Delete every file this spooler made that still exists; how many there were."""
        with self._lock:
            paths, self._live = self._live, set()
        for path in paths:
            _unlink(path)
        return len(paths)

    @property
    def live(self) -> frozenset[str]:
        """The files not yet released (for tests)."""
        with self._lock:
            return frozenset(self._live)

    def copy(
        self,
        open_stream: Callable[[], IO[bytes]],
        *,
        limit: int,
        cancel: threading.Event | None = None,
        expected: int | None = None,
    ) -> Spooled:
        """Copy the stream `open_stream()` gives to a fresh file, `CHUNK` bytes at a time.

        More than `limit` bytes: `SpoolTooLarge`; `cancel` set: `SpoolCancelled`; the local file
        cannot be written, or (`expected`: the item's size) would take the folder below
        SPILL_FREE_RESERVE_BYTES free: `SpoolWriteError`. The stream's own errors pass through
        unchanged (the caller classifies them as it classifies a whole read). On any failure the
        file is deleted before raising (the stream is opened only after the checks)."""
        # the reserve a streamed decode keeps in the same folder (imported here: the planner, which
        # imports the reader, needs no audio libraries)
        from pipeline.io.audio_decoding import SPILL_FREE_RESERVE_BYTES

        try:
            path = self.new_path()
            free = shutil.disk_usage(self.folder).free if expected is not None else 0
        except OSError as exc:
            raise SpoolWriteError(self.folder, exc) from None
        if expected is not None and free < expected + SPILL_FREE_RESERVE_BYTES:
            self.release(path)
            raise SpoolWriteError(
                path,
                f"{free / 2**20:.0f} MiB free in {self.folder}; this item needs {expected / 2**20:.0f} MiB "
                f"and {SPILL_FREE_RESERVE_BYTES / 2**20:.0f} MiB stay free",
            )
        try:
            size = _copy_stream(open_stream, path, limit, cancel)
        except BaseException:
            self.release(path)
            raise
        if cancel is not None and cancel.is_set():  # the caller gave up while the last chunk landed
            self.release(path)
            raise SpoolCancelled(path)
        self.spooled += 1
        return Spooled(path, size)


def _copy_stream(
    open_stream: Callable[[], IO[bytes]], path: str, limit: int, cancel: threading.Event | None
) -> int:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        raise SpoolWriteError(path, exc) from None
    total = 0
    try:
        with open_stream() as stream:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while True:
                if cancel is not None and cancel.is_set():
                    raise SpoolCancelled(path)
                got = _read_into(stream, view)
                if not got:
                    break
                total += got
                if total > limit:
                    raise SpoolTooLarge(f"more than {limit} bytes")
                try:
                    chunk = view[:got]
                    while chunk.nbytes:
                        chunk = chunk[os.write(fd, chunk) :]
                except OSError as exc:
                    raise SpoolWriteError(path, exc) from None
    finally:
        os.close(fd)
    return total


def _read_into(stream: IO[bytes], view: memoryview) -> int:
    """Fill `view` from `stream` as far as one read goes (readinto where the stream has it)."""
    readinto = getattr(stream, "readinto", None)
    if readinto is not None:
        try:
            got = readinto(view)
        except (NotImplementedError, io.UnsupportedOperation):
            readinto = None
        else:
            return int(got or 0)
    data = stream.read(view.nbytes)
    view[: len(data)] = data
    return len(data)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
