"""Local scratch files of decoded and spooled audio: where they go, how they are named, and the
sweep that deletes those of workers that died.

Long items are decoded to a float32 file instead of memory (`pipeline.io.audio_decoding`, spill
files), and big encoded items are copied to a local file before decoding (`pipeline.io.spool`).
A SIGKILL gives a worker no chance to delete its files, so every name starts with the worker's
pid: the first worker to use a folder in a process deletes the files of pids that are gone.

    folder = spill_folder(None)          # <system temp>/semtok-spill, swept once per process
    path = new_spill_path(folder)        # "<pid>-<seq>-<random>.f32", not created
    ...
    remove_quietly(path)
"""

from __future__ import annotations

import itertools
import os
import re
import tempfile
import uuid

SPILL_SUFFIX = ".f32"
# Items this long or longer are decoded to a spill file rather than memory (tokenize and audit).
DEFAULT_STREAM_MIN_SECONDS = 600.0
# spill files (.f32), in-memory items handed over through a file (.f32.in), spooled reads (.in)
_SPILL_NAME = re.compile(r"^(\d+)-[0-9a-f-]+(\.f32|\.f32\.in|\.in)$")
_SEQ = itertools.count()
_SWEPT: set[str] = set()  # folders this process has cleaned of dead workers' files


def spill_folder(folder: str | None) -> str:
    """`folder` (default `<system temp>/semtok-spill`), created, and cleaned of dead workers'
    files on first use in this process."""
    folder = folder or os.path.join(tempfile.gettempdir(), "semtok-spill")
    if folder not in _SWEPT:
        os.makedirs(folder, exist_ok=True)
        sweep_spill_dir(folder)
        _SWEPT.add(folder)
    return folder


def scratch_path(folder: str, suffix: str) -> str:
    """A fresh name in `folder` for this process ("<pid>-<seq>-<random><suffix>", not created):
    the pid lets `sweep_spill_dir` find the files of workers that died."""
    return os.path.join(folder, f"{os.getpid()}-{next(_SEQ)}-{uuid.uuid4().hex[:12]}{suffix}")


def new_spill_path(folder: str) -> str:
    """A fresh spill file name in `folder` for this process (the file is not created)."""
    return scratch_path(folder, SPILL_SUFFIX)


def sweep_spill_dir(folder: str) -> int:
    """Delete spill files whose worker (the pid in the name) is gone; how many were deleted."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        match = _SPILL_NAME.match(name)
        if match is None or int(match.group(1)) == os.getpid() or _alive(int(match.group(1))):
            continue
        if remove_quietly(os.path.join(folder, name)):
            removed += 1
    return removed


def remove_quietly(path: str) -> bool:
    """Delete `path` if it is there and ours to delete; whether it was deleted."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError:  # another user's file, a read-only folder: leave it
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
