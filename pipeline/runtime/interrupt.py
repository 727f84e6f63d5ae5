"""SIGINT/SIGTERM as an exception: `semtok` stops cleanly and says so in one line.

`install_handlers()` (called by the CLI's `main`, in the main thread) makes both signals raise
`Interrupted`, a `BaseException` so that `except Exception` blocks do not swallow it. A pipeline
that wants to record the stop catches it, writes its run record ("interrupted") and re-raises.
Commits are atomic, so whatever was committed before the signal stays valid: a rerun resumes.
A second signal while stopping ends the process at once with the same status.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The process got SIGINT or SIGTERM; `exit_status` is the shell's 128 + signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(self.signal_name)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        return f"semtok: interrupted ({self.signal_name}); the output is consistent, rerun to resume"


_state = {"raised": False, "installed": False}


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state["raised"]:  # a second signal while stopping: stop now
        print(Interrupted(signum).message(), file=sys.stderr, flush=True)
        os._exit(128 + signum)
    _state["raised"] = True
    raise Interrupted(signum)


def install_handlers() -> Callable[[], None]:
    """Make SIGINT and SIGTERM raise `Interrupted`; returns a function restoring the old handlers.

    Outside the main thread (signals cannot be handled there) nothing changes. Call it again after
    a library replaced a handler (`ray.init` installs its own SIGTERM handler).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _state["raised"], _state["installed"] = False, True
    previous: dict[int, Any] = {sig: signal.signal(sig, _handler) for sig in SIGNALS}

    def restore() -> None:
        _state["installed"] = False
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    return restore


def reinstall_handlers() -> None:
    """Put the `Interrupted` handlers back (e.g. after `ray.init` replaced SIGTERM's) when
    `install_handlers` installed them (so a library user's handlers are left alone)."""
    if _state["installed"] and threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _handler)
