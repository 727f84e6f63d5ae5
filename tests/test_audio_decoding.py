"""decode_audio: every format / rate / channel layout / bit depth -> float32 mono 16 kHz."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from codec import SemantiCodec
from codec.resample import resample
from pipeline.io.audio_decoding import (
    MAX_ABS_SAMPLE,
    REASONS,
    RESAMPLERS,
    AudioDecodeError,
    _Limits,
    _Output,
    _read_pyav,
    decode_audio,
)
from tests.conftest import local_writer
from tests.corpus import OK, build_corpus, encode_av, multichannel, speech_like, wav_bytes

_STORE: dict[str, bytes] = {}
SPEC = build_corpus(_STORE.__setitem__, long_seconds=180)
ITEMS = {it.item_id: it for it in SPEC.items}


@pytest.mark.parametrize("item_id", sorted(ITEMS))
def test_corpus_item_decodes_as_expected(item_id):
    item = ITEMS[item_id]
    data = _STORE[item_id]
    if item.expected != OK:
        with pytest.raises(AudioDecodeError) as info:
            decode_audio(data, name_hint=item_id)
        assert info.value.reason == item.expected
        return
    out = decode_audio(data, name_hint=item_id)
    x = out.samples
    assert x.dtype == np.float32 and x.ndim == 1 and x.flags["C_CONTIGUOUS"]
    assert np.isfinite(x).all() and np.abs(x).max() <= 1.0 + 1e-3
    assert out.source_sample_rate == item.sample_rate
    assert out.source_channels == item.channels
    expected_len = item.frames * 16000 / item.sample_rate
    tolerance = max(1.5, item.tolerance_s * 16000)
    assert abs(len(x) - expected_len) <= tolerance, (len(x), expected_len)
    assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) > 0.01  # not silence


def test_decoding_does_not_depend_on_name_hint():
    data = _STORE["formats/aac_clip.m4a"]
    a = decode_audio(data, name_hint="x.m4a").samples
    b = decode_audio(data, name_hint="x.wav").samples
    c = decode_audio(data).samples
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_int16_scaling_matches_soundfile_convention():
    pcm = np.array([-32768, -16384, 0, 16384, 32767], dtype=np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, 16000, format="WAV", subtype="PCM_16")
    x = decode_audio(buf.getvalue()).samples
    np.testing.assert_allclose(x, pcm / 32768.0, atol=1e-7)


@pytest.mark.parametrize("sr", [8000, 44100, 48000])
def test_channel_policies_soxr(sr):
    stereo = multichannel(0.5, sr, 2, seed=3)
    data = wav_bytes(stereo, sr, "FLOAT")
    first = decode_audio(data, channel_policy="first", resampler="soxr-hq").samples
    mean = decode_audio(data, channel_policy="mean", resampler="soxr-hq").samples
    ref_first = soxr.resample(stereo[:, 0], sr, 16000, quality="HQ")
    ref_mean = soxr.resample(stereo.mean(axis=1), sr, 16000, quality="HQ")
    np.testing.assert_allclose(first, ref_first, atol=1e-5)
    np.testing.assert_allclose(mean, ref_mean, atol=1e-5)
    assert np.abs(first - mean).max() > 0.05  # the policies really differ on this input
    # soxr is linear and per-channel: resampling both channels then taking channel 0 is the same.
    both = soxr.resample(stereo, sr, 16000, quality="HQ")
    np.testing.assert_allclose(first, both[:, 0], atol=1e-5)
    with pytest.raises(ValueError):
        decode_audio(data, channel_policy="left")


@pytest.mark.parametrize("sr", [8000, 44100, 48000])
def test_channel_policies_official(sr):
    stereo = multichannel(0.5, sr, 2, seed=3)
    data = wav_bytes(stereo, sr, "FLOAT")
    first = decode_audio(data, channel_policy="first").samples
    mean = decode_audio(data, channel_policy="mean", resampler="official").samples
    both = resample(torch.from_numpy(np.ascontiguousarray(stereo.T)), sr, 16000).numpy()
    np.testing.assert_array_equal(first, both[0])  # all channels resampled, then channel 0
    mono = stereo.mean(axis=1, dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(mean, resample(torch.from_numpy(mono)[None], sr, 16000)[0].numpy())
    assert np.abs(first - mean).max() > 0.05  # the policies really differ on this input
    # close to soxr on the band both keep, but not the same samples
    soxr_first = decode_audio(data, resampler="soxr-hq").samples
    n = min(len(first), len(soxr_first))
    assert abs(len(first) - len(soxr_first)) <= 1 and not np.array_equal(first[:n], soxr_first[:n])
    assert np.sqrt(np.mean((first[100 : n - 100] - soxr_first[100 : n - 100]) ** 2)) < 0.01
    with pytest.raises(ValueError, match="resampler"):
        decode_audio(data, resampler="sinc")
    assert RESAMPLERS == ("official", "soxr-hq")


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_resampling_preserves_a_tone(resampler):
    sr = 44100
    t = np.arange(sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    x = decode_audio(wav_bytes(tone, sr, "FLOAT"), resampler=resampler).samples
    t16 = np.arange(len(x)) / 16000
    ideal = 0.5 * np.sin(2 * np.pi * 1000 * t16)
    core = slice(800, len(x) - 800)  # away from the filter's edge effects
    err = x[core] - ideal[core]
    snr_db = 10 * np.log10(np.mean(ideal[core] ** 2) / np.mean(err**2))
    assert snr_db > 60


def test_non_finite_samples_are_rejected():
    x = speech_like(0.2, 16000)
    x[5] = -np.inf
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(wav_bytes(x, 16000, "FLOAT"))
    assert info.value.reason == "non_finite"


def test_empty_inputs():
    for data in (b"", wav_bytes(np.zeros(0, dtype=np.float32), 16000)):
        with pytest.raises(AudioDecodeError) as info:
            decode_audio(data)
        assert info.value.reason == "empty_audio"


def test_max_seconds_guards_against_bombs():
    data = wav_bytes(speech_like(3.0, 16000), 16000)
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(data, max_seconds=2.0)
    assert info.value.reason == "too_long"
    m4a = encode_av(speech_like(3.0, 16000), 16000, "mp4", "aac")
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(m4a, max_seconds=1.0)
    assert info.value.reason == "too_long"
    assert len(decode_audio(data, max_seconds=None).samples) == 48000


def test_decodes_from_local_files(tmp_path, tiny_wav_bytes, tiny_audio):
    local_writer(tmp_path)("a b/clip.wav", tiny_wav_bytes)
    out = decode_audio((tmp_path / "a b" / "clip.wav").read_bytes())
    np.testing.assert_allclose(out.samples, tiny_audio, atol=1 / 32768 + 1e-7)


# -- official resampling: the pipeline's samples are SemantiCodec.load_audio's --------------------------
@pytest.fixture(scope="module")
def tiny_codec() -> SemantiCodec:
    return SemantiCodec(50, 16384, weights="random:0", size="tiny", device="cpu")


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000, 96000])
def test_official_resampler_equals_load_audio(tiny_codec, tmp_path, sr, channels):
    x = multichannel(0.7, sr, channels, seed=sr % 7) if channels > 1 else speech_like(0.7, sr, seed=2)
    path = tmp_path / f"clip_{sr}_{channels}.wav"
    sf.write(path, x, sr, subtype="PCM_16")
    decoded = decode_audio(path.read_bytes(), resampler="official", channel_policy="first")
    official = tiny_codec.load_audio(path).numpy()
    assert decoded.samples.dtype == official.dtype == np.float32
    assert np.array_equal(decoded.samples, official)
    assert torch.equal(tiny_codec.encode(torch.from_numpy(decoded.samples)), tiny_codec.encode(str(path)))


# -- sample values and rates ---------------------------------------------------------------------------
def test_absurd_but_finite_samples_are_out_of_range():
    x = speech_like(0.2, 16000)
    for peak in (1e30, 32767.0, MAX_ABS_SAMPLE * 1.01):
        y = x.copy()
        y[100] = -peak
        with pytest.raises(AudioDecodeError) as info:
            decode_audio(wav_bytes(y, 16000, "FLOAT"))
        assert info.value.reason == "out_of_range", peak
    loud = x * 4  # float files may go above full scale: that is still audio
    assert np.abs(decode_audio(wav_bytes(loud, 16000, "FLOAT")).samples).max() > 1.5
    unscaled = np.round(x * 32767).astype(np.float32)  # integer PCM stored as float, unscaled
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(wav_bytes(unscaled, 22050, "FLOAT"))
    assert info.value.reason == "out_of_range"


def test_rates_the_official_filter_cannot_afford_are_refused():
    x = speech_like(0.3, 44101)
    data = wav_bytes(x, 44101)  # coprime with 16 kHz: a 2.8 GB official filter bank
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(data)
    assert info.value.reason == "unsupported_rate" and "soxr-hq" in info.value.detail
    assert len(decode_audio(data, resampler="soxr-hq").samples) == round(len(x) * 16000 / 44101)
    for sr in (500, 1_000_000):
        with pytest.raises(AudioDecodeError) as info:
            decode_audio(wav_bytes(speech_like(0.1, sr), sr), resampler="soxr-hq")
        assert info.value.reason == "unsupported_rate"


# -- bounded memory ------------------------------------------------------------------------------------
def _wav_header(sr: int, channels: int, bits: int, data_len: int) -> bytes:
    """A RIFF/WAVE PCM header whose data chunk claims `data_len` bytes (the body is whatever follows)."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, sr, sr * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_len)
    return b"RIFF" + struct.pack("<I", (data_len + len(body)) & 0xFFFFFFFF) + body


def _silence_flac(seconds: float, sr: int = 384_000, channels: int = 8) -> bytes:
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", sr, channels, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros((sr, channels), dtype=np.float32)
        for _ in range(int(seconds)):
            f.write(block)
    return buf.getvalue()


def _flac_claiming(data: bytes, total_frames: int) -> bytes:
    """The FLAC with STREAMINFO's 36-bit total-samples field set to `total_frames` (0 = unknown)."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO comes first
    out = bytearray(data)
    field = int.from_bytes(out[18:26], "big")
    field = (field & ~((1 << 36) - 1)) | total_frames
    out[18:26] = field.to_bytes(8, "big")
    return bytes(out)


LYING_WAV = _wav_header(384_000, 8, 16, 0xFFFFFF00) + bytes(8 * 2 * 4096)  # claims 4 GB, holds 64 KiB
SILENCE_FLAC = _silence_flac(2)  # 8 ch x 384 kHz, a few KiB


def _reason(data: bytes, **kwargs) -> str:
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(data, **kwargs)
    return info.value.reason


def test_lying_wav_header_decodes_only_its_body():
    # libsndfile and FFmpeg both trust the body over the data chunk's 4 GB claim: 4096 real frames
    limits = _Limits(4 * 3600.0, 2 * 1024**3, 16000, "official", "first")
    for name_hint in ("x.wav", "x.mka"):  # soundfile first, PyAV first
        out = decode_audio(LYING_WAV, name_hint=name_hint)
        assert out.source_channels == 8 and out.source_sample_rate == 384_000
        assert len(out.samples) == 4096 * 16000 // 384_000 + 1
    output = _Output(limits, None, "first", "official")
    _read_pyav(LYING_WAV, limits, output)  # 8 channels: no planar-frame crash
    frames, sr, channels = output.decoded()
    assert frames.shape == (4096, 8) and (sr, channels) == (384_000, 8)
    assert _reason(LYING_WAV, max_decoded_bytes=4096 * 8 * 4 - 1) == "too_large"


def test_flac_claims_are_checked_before_and_while_decoding():
    hours = 3 * 3600 * 384_000
    started = time.monotonic()
    assert _reason(_flac_claiming(SILENCE_FLAC, hours)) == "too_large"  # 3 h x 8 ch: 265 GB
    assert _reason(_flac_claiming(SILENCE_FLAC, hours * 2), max_decoded_bytes=None) == "too_long"
    assert _reason(SILENCE_FLAC, max_decoded_bytes=16 * 2**20) == "too_large"  # honest: 24 MiB
    unknown = _flac_claiming(SILENCE_FLAC, 0)  # length unknown: the running check stops it
    assert _reason(unknown, max_decoded_bytes=16 * 2**20) == "too_large"
    assert _reason(unknown, max_seconds=1.0) == "too_long"
    assert len(decode_audio(unknown).samples) == 2 * 16000
    # PyAV: the stream duration in the header, then the running count
    assert _reason(_flac_claiming(SILENCE_FLAC, hours), name_hint="x.mka") == "too_large"
    assert _reason(unknown, name_hint="x.mka", max_decoded_bytes=16 * 2**20) == "too_large"
    assert time.monotonic() - started < 10


_CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy, soundfile, soxr, av
    from pipeline.io.audio_decoding import AudioDecodeError, decode_audio
    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    limit = vm + int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = []
    for path, kwargs in json.loads(sys.argv[2]):
        data = open(path, "rb").read()
        try:
            result = {"ok": len(decode_audio(data, **kwargs).samples)}
        except AudioDecodeError as exc:
            result = {"reason": exc.reason}
        except MemoryError:
            result = {"memory_error": True}
        result["rss_growth_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        results.append(result)
    print(json.dumps(results))
""")


def test_lying_headers_fail_cleanly_with_1_5_gb_of_address_space(tmp_path):
    """Under RLIMIT_AS = (baseline + 1.5 GiB) the error reason comes back, never a MemoryError."""
    hours = _flac_claiming(SILENCE_FLAC, 3 * 3600 * 384_000)
    cases = [
        (hours, {}, "too_large"),
        (hours, {"name_hint": "x.mka"}, "too_large"),
        (_flac_claiming(SILENCE_FLAC, 2 * 3 * 3600 * 384_000), {"max_decoded_bytes": None}, "too_long"),
        (hours, {"max_decoded_bytes": None}, "too_large"),  # no budget: the MemoryError, as a reason
        (_flac_claiming(SILENCE_FLAC, 0), {"max_decoded_bytes": 16 * 2**20}, "too_large"),
        (_silence_flac(30), {"max_decoded_bytes": 256 * 2**20}, "too_large"),  # honest: 368 MB
        (LYING_WAV, {}, "ok"),
        (LYING_WAV, {"name_hint": "x.mka"}, "ok"),
    ]
    jobs = []
    for index, (data, kwargs, _) in enumerate(cases):
        path = tmp_path / f"input{index}.bin"
        path.write_bytes(data)
        jobs.append((str(path), kwargs))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(3 * 2**29), json.dumps(jobs)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for (_, kwargs, expected), result in zip(cases, results, strict=True):
        if expected == "ok":
            assert result.get("ok") == 171, (kwargs, result)
        else:
            assert result.get("reason") == expected, (kwargs, result)
    assert results[-1]["rss_growth_kib"] < 100 * 1024, results  # nothing big was ever decoded


def test_every_reason_is_documented():
    import pipeline.io.audio_decoding as module

    assert set(REASONS) == {
        "empty_audio",
        "undecodable",
        "unsupported_rate",
        "too_long",
        "too_large",
        "non_finite",
        "out_of_range",
        "spill_failed",
    }
    for reason in REASONS:
        assert f"\n{reason} " in module.__doc__
