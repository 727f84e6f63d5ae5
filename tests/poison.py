"""Test-only poison inputs: a decode function that crashes, hangs or explodes on chosen bytes.

Production code never imports this: tests name `decode_or_die` by its dotted path
(``decode_fn="tests.poison:decode_or_die"``), and it runs inside the decode process (or in-process).
An input that starts with one of the magic prefixes below misbehaves; anything else is decoded by
the real `decode_audio`. It imports nothing heavy (no torch), so it also fits under small memory
caps in the decode process.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from pipeline.io.audio_decoding import decode_audio
from pipeline.records import DecodedAudio

DECODE_FN = "tests.poison:decode_or_die"

ABORT = b"POISON:abort\n"  # os.abort(): SIGABRT, like a failed assertion in a native library
SEGV = b"POISON:segv\n"  # SIGSEGV, like a bad pointer in libsndfile / FFmpeg
KILL = b"POISON:kill\n"  # SIGKILL, like the kernel's OOM killer
HANG = b"POISON:hang\n"  # never returns
BOMB = b"POISON:bomb\n"  # allocates (and touches) 10 GB
EXIT = b"POISON:exit\n"  # os._exit(3)
RAISE = b"POISON:raise\n"  # raises KeyError (a bug, not bad data)


def decode_or_die(data: bytes, **kwargs: Any) -> DecodedAudio:
    head = bytes(data[:32])
    if head.startswith(ABORT):
        os.abort()
    if head.startswith(SEGV):
        os.kill(os.getpid(), signal.SIGSEGV)
    if head.startswith(KILL):
        os.kill(os.getpid(), signal.SIGKILL)
    if head.startswith(HANG):
        while True:
            time.sleep(3600)
    if head.startswith(BOMB):
        import numpy as np

        block = np.ones(10 * 10**9, dtype=np.uint8)
        return DecodedAudio(samples=block.view(np.float32), source_sample_rate=16000, source_channels=1)
    if head.startswith(EXIT):
        os._exit(3)
    if head.startswith(RAISE):
        raise KeyError("poison: a bug in the decode function")
    return decode_audio(data, **kwargs)
