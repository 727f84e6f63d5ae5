"""Seeded fuzzing of decode_audio: damaged audio bytes end as DecodedAudio or a documented reason.

Every call must return finite 1-D float32 samples or raise AudioDecodeError with a reason from
`REASONS` — never another exception, never a hang — and each call must be quick. Runs in-process
(crash/hang isolation of real workers is a separate layer around decode_audio).
"""

from __future__ import annotations

import collections
import faulthandler
import io
import struct
import time

import numpy as np
import pytest
import soundfile as sf

from pipeline.io.audio_decoding import REASONS, AudioDecodeError, decode_audio
from tests.corpus import encode_av, multichannel, speech_like

ITEM_SECONDS = 5.0  # bound on one call
TOTAL_SECONDS = 60.0  # bound on the whole run (about 10-20 s on a shared 2-core machine)
MUTANTS_PER_SEED = 40


def _sf_bytes(x: np.ndarray, sr: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _seed_files() -> dict[str, bytes]:
    """Valid files of every container family we decode (formats the local libraries cannot write are
    left out)."""
    files: dict[str, bytes] = {
        "pcm16.wav": _sf_bytes(speech_like(0.3, 16000, seed=1), 16000, "WAV", "PCM_16"),
        "stereo_pcm24.wav": _sf_bytes(multichannel(0.2, 44100, 2, seed=2), 44100, "WAV", "PCM_24"),
        "float.wav": _sf_bytes(speech_like(0.25, 22050, seed=3), 22050, "WAV", "FLOAT"),
        "stereo.flac": _sf_bytes(multichannel(0.3, 48000, 2, seed=4), 48000, "FLAC", "PCM_16"),
    }
    optional = {
        "vorbis.ogg": lambda: _sf_bytes(speech_like(0.5, 44100, seed=5), 44100, "OGG", "VORBIS"),
        "layer3.mp3": lambda: _sf_bytes(speech_like(0.5, 44100, seed=6), 44100, "MP3", "MPEG_LAYER_III"),
        "aac.m4a": lambda: encode_av(speech_like(0.5, 44100, seed=7), 44100, "mp4", "aac"),
    }
    for name, build in optional.items():
        try:
            files[name] = build()
        except Exception:  # noqa: BLE001 - the local library may lack that encoder
            continue
    return files


def _wav_field_damage(data: bytes, rng: np.random.Generator) -> bytes:
    """Overwrite one fmt/data header field of a canonical 44-byte-header WAV with an extreme value."""
    fields = {  # offset: struct format
        22: "<H",  # channels
        24: "<I",  # sample rate
        28: "<I",  # byte rate
        32: "<H",  # block align
        34: "<H",  # bits per sample
        4: "<I",  # RIFF length
        16: "<I",  # fmt chunk length
    }
    data_pos = data.find(b"data")
    if data_pos > 0:
        fields[data_pos + 4] = "<I"  # data chunk length: lie
    offset = int(rng.choice(list(fields)))
    fmt = fields[offset]
    top = 0xFFFF if fmt == "<H" else 0xFFFFFFFF
    value = int(rng.choice([0, 1, top, top // 2, int(rng.integers(0, top + 1)), 384_000, 7])) & top
    out = bytearray(data)
    out[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(out)


def _flac_field_damage(data: bytes, rng: np.random.Generator) -> bytes:
    """Rewrite STREAMINFO's rate (20 bits), channels-1 (3), bits-1 (5) or total samples (36)."""
    out = bytearray(data)
    packed = int.from_bytes(out[18:26], "big")
    shift, width = [(44, 20), (41, 3), (36, 5), (0, 36)][int(rng.integers(0, 4))]
    mask = ((1 << width) - 1) << shift
    value = int(rng.choice([0, (1 << width) - 1, int(rng.integers(0, 1 << width))]))
    packed = (packed & ~mask) | (value << shift)
    out[18:26] = packed.to_bytes(8, "big")
    return bytes(out)


def _mutate(name: str, data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    kind = int(rng.integers(0, 6))
    if kind == 0:  # truncation anywhere, headers included
        cut = int(rng.integers(1, len(data)))
        return f"truncate@{cut}", data[:cut]
    if kind == 1:  # random byte flips anywhere
        out = bytearray(data)
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 24))):
            out[pos] ^= int(rng.integers(1, 256))
        return "flips", bytes(out)
    if kind == 2:  # flips in the header region
        out = bytearray(data)
        for pos in rng.integers(0, min(len(data), 128), size=int(rng.integers(1, 6))):
            out[pos] = int(rng.integers(0, 256))
        return "header flips", bytes(out)
    if kind == 3 and name.endswith(".wav"):
        return "wav field", _wav_field_damage(data, rng)
    if kind == 3 and name.endswith(".flac"):
        return "flac field", _flac_field_damage(data, rng)
    if kind == 4:  # a chunk of garbage spliced into the middle (lengths no longer add up)
        pos = int(rng.integers(0, len(data)))
        return "splice", data[:pos] + rng.bytes(int(rng.integers(1, 4096))) + data[pos:]
    # a block duplicated: containers whose lengths and counters lie
    start = int(rng.integers(0, len(data)))
    stop = min(len(data), start + int(rng.integers(1, 2048)))
    return "duplicate", data[:stop] + data[start:stop] * int(rng.integers(1, 4)) + data[stop:]


@pytest.fixture(autouse=True)
def _hang_guard():
    """A hang would otherwise block the run forever: dump the stacks and exit instead."""
    faulthandler.dump_traceback_later(5 * TOTAL_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def test_damaged_audio_decodes_or_fails_with_a_documented_reason():
    seeds = _seed_files()
    assert {"pcm16.wav", "float.wav", "stereo.flac"} <= set(seeds)
    decode_audio(seeds["float.wav"], name_hint="float.wav")  # imports (torch, codec) are not per-call cost
    rng = np.random.default_rng(20240611)
    outcomes: collections.Counter[str] = collections.Counter()
    slowest = (0.0, "")
    started = time.monotonic()
    for name, data in seeds.items():
        for index in range(MUTANTS_PER_SEED):
            how, mutant = _mutate(name, data, rng)
            hint = name if index % 3 else "x.mka"  # every third call: PyAV first
            label = f"{name} #{index} {how} hint={hint}"
            begin = time.monotonic()
            try:
                out = decode_audio(mutant, name_hint=hint)
            except AudioDecodeError as exc:
                assert exc.reason in REASONS, (label, exc)
                outcomes[exc.reason] += 1
            except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
                pytest.fail(f"{label}: {type(exc).__name__}: {exc}")
            else:
                x = out.samples
                assert x.dtype == np.float32 and x.ndim == 1 and len(x) > 0, label
                assert np.isfinite(x).all(), label
                outcomes["ok"] += 1
            elapsed = time.monotonic() - begin
            assert elapsed < ITEM_SECONDS, (label, elapsed)
            slowest = max(slowest, (elapsed, label))
    total = time.monotonic() - started
    print(
        f"\n{sum(outcomes.values())} mutants in {total:.1f}s, slowest {slowest[0]:.2f}s ({slowest[1]}):",
        dict(outcomes),
    )
    assert total < TOTAL_SECONDS
    assert outcomes["ok"] > 0 and outcomes["undecodable"] > 0  # the mutations reach both sides


def test_header_extremes_of_a_wav():
    """Every header field of a WAV at 0 / max: only documented reasons, or audio."""
    base = _sf_bytes(speech_like(0.2, 16000, seed=9), 16000, "WAV", "PCM_16")
    data_pos = base.find(b"data")
    for offset, fmt in [(22, "<H"), (24, "<I"), (28, "<I"), (32, "<H"), (34, "<H"), (data_pos + 4, "<I")]:
        top = 0xFFFF if fmt == "<H" else 0xFFFFFFFF
        for value in (0, 1, 3, top):
            mutant = bytearray(base)
            mutant[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
            for hint in ("a.wav", "a.mka"):
                begin = time.monotonic()
                try:
                    out = decode_audio(bytes(mutant), name_hint=hint)
                    assert np.isfinite(out.samples).all() and out.samples.dtype == np.float32
                except AudioDecodeError as exc:
                    assert exc.reason in REASONS, (offset, value, exc)
                assert time.monotonic() - begin < ITEM_SECONDS, (offset, value, hint)
