"""The isolated decoder: a crash, a kill, a hang or a memory bomb costs one item, never the worker.

No Ray here: the decoder is driven directly, with the test-only decode function in tests/poison.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.io.audio_decoding import AudioDecodeError, decode_audio
from pipeline.io.isolated_decode import IsolatedDecoder, resolve_function, shared_decoder
from tests import poison
from tests.corpus import speech_like, wav_bytes

REPO = Path(__file__).resolve().parents[1]
GOOD = wav_bytes(speech_like(0.5, 16000, seed=3), 16000)
STEREO_48K = wav_bytes(np.stack([speech_like(0.5, 48000, seed=4), speech_like(0.5, 48000, seed=5)], 1), 48000)


def gone(pid: int) -> bool:
    """No such process, or only a zombie left for init (the parent here already reaped its own)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


@pytest.fixture()
def decoder():
    dec = IsolatedDecoder(decode_fn=poison.DECODE_FN, timeout_s=2.0, max_memory_bytes=512 * 2**20)
    yield dec
    dec.close()


def assert_still_decodes(dec: IsolatedDecoder) -> None:
    audio = dec.decode(GOOD, channel_policy="first", name_hint="x.wav")
    assert np.array_equal(audio.samples, decode_audio(GOOD).samples)


def test_good_items_match_an_in_process_decode(decoder) -> None:
    for data, policy in ((GOOD, "first"), (STEREO_48K, "mean"), (STEREO_48K, "first")):
        got = decoder.decode(data, channel_policy=policy, name_hint="a.wav", max_seconds=60.0)
        want = decode_audio(data, channel_policy=policy, name_hint="a.wav", max_seconds=60.0)
        assert got.samples.dtype == np.float32 and got.samples.flags.c_contiguous
        assert np.array_equal(got.samples, want.samples)
        assert (got.source_sample_rate, got.source_channels) == (
            want.source_sample_rate,
            want.source_channels,
        )
    assert decoder.starts == 1  # one child, reused


@pytest.mark.parametrize(
    ("magic", "reason", "detail"),
    [
        (poison.ABORT, "decode_crashed", "SIGABRT"),
        (poison.SEGV, "decode_crashed", "SIGSEGV"),
        (poison.KILL, "decode_crashed", "SIGKILL"),
        (poison.EXIT, "decode_crashed", "exited with code 3"),
        (poison.HANG, "decode_timeout", "within 2 s"),
        (poison.BOMB, "out_of_memory", "MemoryError"),
    ],
)
def test_a_poison_item_is_one_error_and_the_next_item_decodes(decoder, magic, reason, detail) -> None:
    assert_still_decodes(decoder)
    first_pid = decoder.pid
    started = time.monotonic()
    with pytest.raises(AudioDecodeError) as caught:
        decoder.decode(magic + GOOD, channel_policy="first")
    assert caught.value.reason == reason
    assert detail in caught.value.detail
    assert time.monotonic() - started < 20
    assert gone(first_pid)  # killed (or died) and reaped: no zombie
    assert_still_decodes(decoder)
    assert decoder.starts == 2


def test_bad_data_passes_through_without_a_restart(decoder) -> None:
    with pytest.raises(AudioDecodeError) as caught:
        decoder.decode(b"not audio at all", name_hint="x.wav")
    assert caught.value.reason == "undecodable"
    with pytest.raises(AudioDecodeError) as caught:
        decoder.decode(GOOD, max_seconds=0.1)
    assert caught.value.reason == "too_long"
    assert_still_decodes(decoder)
    assert decoder.starts == 1


def test_a_bug_in_the_decode_function_raises_as_it_would_in_process(decoder) -> None:
    with pytest.raises(KeyError, match="poison"):
        decoder.decode(poison.RAISE)
    with pytest.raises(ValueError, match="channel_policy"):
        decoder.decode(GOOD, channel_policy="loudest")
    assert_still_decodes(decoder)
    assert decoder.starts == 1


def test_a_child_killed_while_idle_is_replaced(decoder) -> None:
    decoder.start()
    pid = decoder.pid
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert_still_decodes(decoder)
    assert decoder.pid != pid and decoder.starts == 2


def test_close_leaves_no_process_and_the_decoder_can_start_again(decoder) -> None:
    decoder.start()
    pid = decoder.pid
    assert pid in children_of(os.getpid())
    decoder.close()
    assert decoder.pid is None and gone(pid)
    assert pid not in children_of(os.getpid())
    assert_still_decodes(decoder)
    decoder.close()
    decoder.close()  # idempotent


def test_the_child_exits_when_its_parent_is_killed() -> None:
    code = (
        "import os, signal, sys; from pipeline.io.isolated_decode import IsolatedDecoder; "
        "d = IsolatedDecoder(); d.start(); print(d.pid, flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(pid)


def test_in_process_mode_is_a_plain_call() -> None:
    dec = IsolatedDecoder(decode_fn=poison.DECODE_FN, in_process=True)
    assert np.array_equal(dec.decode(GOOD).samples, decode_audio(GOOD).samples)
    with pytest.raises(KeyError):
        dec.decode(poison.RAISE)
    assert dec.pid is None and dec.starts == 0


def test_one_shared_decoder_per_process_and_settings() -> None:
    a = shared_decoder(decode_fn=poison.DECODE_FN, timeout_s=7.0, max_memory_bytes=None)
    assert shared_decoder(decode_fn=poison.DECODE_FN, timeout_s=7.0, max_memory_bytes=None) is a
    assert shared_decoder(decode_fn=poison.DECODE_FN, timeout_s=8.0, max_memory_bytes=None) is not a


def test_decode_function_paths() -> None:
    assert resolve_function("pipeline.io.audio_decoding:decode_audio") is decode_audio
    assert resolve_function("pipeline.io.audio_decoding.decode_audio") is decode_audio
    with pytest.raises(ValueError):
        resolve_function("decode_audio")
    bad = IsolatedDecoder(decode_fn="pipeline.io.audio_decoding:no_such_function")
    with pytest.raises(RuntimeError, match="no_such_function"):
        bad.decode(GOOD)
    assert bad.pid is None
    with pytest.raises(ValueError):
        IsolatedDecoder(timeout_s=0)
