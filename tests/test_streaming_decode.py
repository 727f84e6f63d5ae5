"""Long items streamed through a spill file give the in-memory path's samples, segments and tokens.

Bit for bit: the official resampler in pieces (`codec.resample.CodecInputStream`), the segments cut
from the spill file (`codec.semanticodec.SegmentPlan`), the decode process returning a path, the
prepare stage's rows, and (Ray) a tokenize job against `SemantiCodec.encode(path)`. Limits still
end as error rows, and no spill file outlives its item.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import codec.resample as resample_module
from codec import SemantiCodec
from codec.resample import CodecInputStream, exact_in_pieces, to_codec_input
from codec.semanticodec import SegmentPlan, split_segments
from pipeline.config import TokenizeConfig
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.manifest import load_errors, load_tokens
from pipeline.io.audio_decoding import AudioDecodeError, SpilledAudio, decode_audio
from pipeline.io.isolated_decode import IsolatedDecoder
from pipeline.io.spill_files import sweep_spill_dir
from pipeline.io.storage import open_filesystem
from pipeline.records import InputUnit
from pipeline.tokenize import prepare_stage
from pipeline.tokenize.fingerprint import job_fingerprint
from pipeline.tokenize.job import run_tokenize
from pipeline.tokenize.prepare_stage import ERROR, SEGMENT, UNIT, PrepareUnit
from tests.corpus import encode_av, encode_sf, speech_like
from tests.helpers import TINY

SPEC = TokenizeConfig(input="x", output="y", **TINY).codec_spec()
DECODE_FN = "tests.test_streaming_decode:decode_spill_or_die"
SPILL_THEN_KILL = b"SPILL:kill\n"
SPILL_THEN_HANG = b"SPILL:hang\n"


def decode_spill_or_die(data: bytes, **kwargs):
    """Runs in the decode process: half-writes the spill file, then dies or hangs (or decodes)."""
    head = bytes(data[:16])
    spill = kwargs.get("spill_path")
    if spill and head.startswith((SPILL_THEN_KILL, SPILL_THEN_HANG)):
        with open(spill, "wb") as fh:
            fh.write(b"\0" * 65536)
        if head.startswith(SPILL_THEN_KILL):
            os.kill(os.getpid(), signal.SIGKILL)
        while True:
            time.sleep(3600)
    return decode_audio(data, **kwargs)


@pytest.fixture()
def small_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resample in calls of 32k frames (in this process), so short clips cross many call boundaries."""
    monkeypatch.setattr(resample_module, "STREAM_MIN_CALL_FRAMES", 1 << 15)
    monkeypatch.setattr(resample_module, "STREAM_CALL_BYTES", 0)
    exact_in_pieces.cache_clear()
    yield
    exact_in_pieces.cache_clear()


def signal_of(seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    left = speech_like(seconds, rate, seed=seed)
    if channels == 1:
        return left
    return np.stack([left, speech_like(seconds, rate, seed=seed + 1)], axis=1)


def streamed(data: bytes, folder: Path, **kwargs) -> tuple[np.ndarray, SpilledAudio]:
    path = folder / f"spill-{time.monotonic_ns()}.f32"
    out = decode_audio(data, spill_path=str(path), stream_min_seconds=0.0, **kwargs)
    assert isinstance(out, SpilledAudio) and out.path == str(path)
    samples = np.fromfile(path, dtype=np.float32)
    path.unlink()
    assert samples.shape[0] == out.num_samples
    return samples, out


# --- the pieces ------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000, 96000])
@pytest.mark.parametrize("channels", [1, 2])
def test_resampling_in_pieces_is_the_whole_call_bit_for_bit(rate: int, channels: int) -> None:
    rng = np.random.default_rng(rate + channels)
    for seconds in (0.3, 2.1, 9.7):  # inside one call, a few calls, many calls
        frames = (0.3 * rng.standard_normal((int(seconds * rate) + 3, channels))).astype(np.float32)
        want = to_codec_input(frames, rate)
        stream = CodecInputStream(rate, 16000, channels, call_frames=1 << 15)
        step = 7919  # pushes that never line up with the calls
        got = [stream.push(frames[i : i + step]) for i in range(0, len(frames), step)]
        got.append(stream.finish())
        np.testing.assert_array_equal(
            np.concatenate(got), want, err_msg=f"{rate} Hz x {channels}, {seconds} s"
        )
        assert stream.samples_out == want.shape[0]


def test_the_probe_finds_pieces_exact_here() -> None:
    assert exact_in_pieces(44100, 16000, 2) and exact_in_pieces(22050, 16000, 1)


@pytest.mark.parametrize("length", [1, 5000, 163_840, 163_841, 5 * 163_840 - 7, 23 * 163_840 + 12_345])
def test_segments_cut_in_batches_are_split_segments(length: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(length)
    wave = (0.3 * rng.standard_normal(length) + 0.05).astype(np.float32)  # a DC offset to remove
    want = split_segments(wave, 50)
    plan = SegmentPlan(length, 50)
    path = tmp_path / "clip.f32"
    wave.tofile(path)
    os.truncate(path, plan.padded_length * 4)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=(plan.padded_length,))
    for size in (1, 4, 16):
        batches = list(plan.batches(mapped, size))
        assert torch.equal(torch.cat([b.samples for b in batches]), want.samples)
        assert torch.equal(torch.cat([b.valid_frames for b in batches]), want.valid_frames)
        assert {b.num_tokens for b in batches} == {want.num_tokens}
    assert plan.count == want.samples.shape[0]


# --- decode_audio, streamed vs in memory --------------------------------------------------------


def _inputs() -> list[tuple[str, bytes, int, int]]:
    cases = []
    for rate in (8000, 22050, 44100, 48000):
        for channels in (1, 2):
            x = signal_of(3.3, rate, channels, seed=rate)
            cases.append(("wav", encode_sf(x, rate, "WAV", "PCM_16"), rate, channels))
            cases.append(("flac", encode_sf(x, rate, "FLAC", "PCM_24"), rate, channels))
    stereo = signal_of(3.3, 44100, 2, seed=7)
    cases.append(("mp3", encode_sf(stereo, 44100, "MP3", "MPEG_LAYER_III"), 44100, 2))
    cases.append(("m4a", encode_av(speech_like(3.3, 48000, seed=8), 48000, "ipod", "aac"), 48000, 1))
    return cases


def test_streamed_decode_gives_the_in_memory_samples(small_calls, tmp_path: Path) -> None:
    for fmt, data, rate, channels in _inputs():
        for policy in ("first", "mean"):
            for resampler in ("official", "soxr-hq"):
                kwargs = {"name_hint": f"x.{fmt}", "channel_policy": policy, "resampler": resampler}
                want = decode_audio(data, **kwargs)
                got, meta = streamed(data, tmp_path, **kwargs)
                np.testing.assert_array_equal(got, want.samples, err_msg=f"{fmt} {rate} {channels} {kwargs}")
                assert (meta.source_sample_rate, meta.source_channels) == (rate, channels)
                assert meta.duration_s == want.duration_s
    assert list(tmp_path.iterdir()) == []


def test_an_item_decides_to_stream_while_decoding_when_its_header_has_no_length(
    small_calls, tmp_path: Path
) -> None:
    data = _flac_claiming(encode_sf(signal_of(6.0, 22050, 2), 22050, "FLAC", "PCM_16"), 0)
    want = decode_audio(data)
    path = tmp_path / "late.f32"
    out = decode_audio(data, spill_path=str(path), stream_min_seconds=2.0)  # crossed at ~2 s
    assert isinstance(out, SpilledAudio)
    np.testing.assert_array_equal(np.fromfile(path, dtype=np.float32), want.samples)
    short = decode_audio(data, spill_path=str(tmp_path / "never.f32"), stream_min_seconds=60.0)
    assert not isinstance(short, SpilledAudio) and not (tmp_path / "never.f32").exists()


def test_a_long_item_is_not_held_to_max_decoded_bytes_a_short_one_still_is(tmp_path: Path) -> None:
    data = encode_sf(signal_of(4.0, 48000, 2), 48000, "FLAC", "PCM_16")
    budget = 100_000  # below this item's 1.5 MB in memory
    for kwargs in ({}, {"spill_path": str(tmp_path / "short.f32"), "stream_min_seconds": 5.0}):
        with pytest.raises(AudioDecodeError) as info:
            decode_audio(data, max_decoded_bytes=budget, **kwargs)
        assert info.value.reason == "too_large"
    out = decode_audio(
        data, max_decoded_bytes=budget, spill_path=str(tmp_path / "a.f32"), stream_min_seconds=3.0
    )
    assert isinstance(out, SpilledAudio)
    np.testing.assert_array_equal(np.fromfile(out.path, dtype=np.float32), decode_audio(data).samples)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.f32"]


def test_where_pieces_would_not_be_exact_the_item_stays_in_memory_or_is_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resample_module, "exact_in_pieces", lambda *args: False)
    data = encode_sf(signal_of(3.0, 44100, 1), 44100, "FLAC", "PCM_16")
    out = decode_audio(data, spill_path=str(tmp_path / "a.f32"), stream_min_seconds=0.0)
    assert not isinstance(out, SpilledAudio)
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(data, spill_path=str(tmp_path / "b.f32"), stream_min_seconds=0.0, max_decoded_bytes=1000)
    assert info.value.reason == "too_large" and "bit-identical" in info.value.detail
    assert list(tmp_path.iterdir()) == []


def _flac_claiming(data: bytes, total_frames: int) -> bytes:
    """The FLAC with STREAMINFO's total-samples field set to `total_frames` (0: length unknown)."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0
    out = bytearray(data)
    field = int.from_bytes(out[18:26], "big")
    out[18:26] = ((field & ~((1 << 36) - 1)) | total_frames).to_bytes(8, "big")
    return bytes(out)


def _silence_flac(seconds: int, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds // 60):
            f.write(np.zeros(rate * 60, dtype=np.float32))
    return buf.getvalue()


def _reason(data: bytes, folder: Path, **kwargs) -> AudioDecodeError:
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(data, spill_path=str(folder / "x.f32"), stream_min_seconds=0.0, **kwargs)
    assert list(folder.iterdir()) == [], "a failed streamed decode left its spill file"
    return info.value


def test_bombs_and_bad_values_end_as_the_same_errors_with_no_file_left(tmp_path: Path) -> None:
    endless = _flac_claiming(_silence_flac(20 * 60), 0)  # 20 min of silence, length unknown: 30 KB
    assert len(endless) < 200_000
    assert _reason(endless, tmp_path, max_spill_bytes=4 * 2**20).reason == "too_large"  # ~2 min spilled
    assert _reason(endless, tmp_path, max_seconds=120.0).reason == "too_long"
    claims = _flac_claiming(_silence_flac(60), 10 * 3600 * 8000)  # a 10 h claim: refused unread
    assert _reason(claims, tmp_path).reason == "too_long"
    assert _reason(claims, tmp_path, max_seconds=None, max_spill_bytes=2**30).reason == "too_large"
    loud = signal_of(2.0, 16000, 1) * np.float32(300.0)  # unscaled: peak 150, over the 64 allowed
    loud[5000] = np.nan
    for values in (loud, np.where(np.isnan(loud), 0.0, loud).astype(np.float32)):
        data = encode_sf(values, 16000, "WAV", "FLOAT")
        with pytest.raises(AudioDecodeError) as memory:
            decode_audio(data)
        got = _reason(data, tmp_path)
        assert (got.reason, got.detail) == (memory.value.reason, memory.value.detail)
    assert _reason(encode_sf(np.zeros((0, 1), np.float32), 16000, "WAV", "PCM_16"), tmp_path).reason == (
        "empty_audio"
    )


def test_a_spill_folder_without_room_is_an_error_row_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.io.audio_decoding as decoding

    monkeypatch.setattr(decoding, "SPILL_FREE_RESERVE_BYTES", 1 << 62)
    data = encode_sf(signal_of(2.0, 16000, 1), 16000, "WAV", "PCM_16")
    error = _reason(data, tmp_path)
    assert error.reason == "spill_failed" and "free" in error.detail
    missing = tmp_path / "no" / "such" / "folder"
    monkeypatch.setattr(decoding, "SPILL_FREE_RESERVE_BYTES", 0)
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(data, spill_path=str(missing / "x.f32"), stream_min_seconds=0.0)
    assert info.value.reason == "spill_failed"


# --- the decode process and the prepare stage --------------------------------------------------


def test_the_decode_process_returns_a_path_not_samples(tmp_path: Path) -> None:
    data = encode_sf(signal_of(60.0, 48000, 2), 48000, "FLAC", "PCM_16")  # 2.9M frames: 2 calls
    m4a = encode_av(speech_like(4.0, 44100, seed=2), 44100, "ipod", "aac")  # PyAV on a mapped file
    decoder = IsolatedDecoder(timeout_s=120.0)
    try:
        out = decoder.decode(data, spill_path=str(tmp_path / "a.f32"), stream_min_seconds=30.0)
        spool = tmp_path / "b.in"
        mapped = decoder.decode(data, spool_path=str(spool), name_hint="b.flac")
        assert not spool.exists()  # the decoder deletes the file it handed over
        m4a_mapped = decoder.decode(m4a, spool_path=str(spool), name_hint="c.m4a")
        with pytest.raises(AudioDecodeError) as empty:
            decoder.decode(b"", spool_path=str(spool))  # an empty file cannot be mapped: b""
        assert empty.value.reason == "empty_audio"
    finally:
        decoder.close()
    assert isinstance(out, SpilledAudio)
    whole = decode_audio(data, name_hint="b.flac").samples
    np.testing.assert_array_equal(np.fromfile(out.path, dtype=np.float32), whole)
    np.testing.assert_array_equal(mapped.samples, whole)
    np.testing.assert_array_equal(m4a_mapped.samples, decode_audio(m4a, name_hint="c.m4a").samples)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.f32"]


def _unit(folder: Path, names: list[str]) -> dict:
    unit = InputUnit("u0", "files", tuple(str(folder / n) for n in names), root=str(folder))
    return {"unit": unit.to_json()}


def test_prepare_stage_rows_are_the_same_streamed_or_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepare_stage, "SPOOL_MIN_BYTES", 1 << 20)  # the long item goes through a file
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "long.flac").write_bytes(encode_sf(signal_of(100.0, 48000, 2), 48000, "FLAC", "PCM_16"))
    (folder / "short.wav").write_bytes(encode_sf(signal_of(12.0, 22050, 1), 22050, "WAV", "PCM_16"))
    row = _unit(folder, ["long.flac", "short.wav"])
    whole = list(PrepareUnit(SPEC, stream_min_seconds=None)(row))
    spill = tmp_path / "spill"
    prepare = PrepareUnit(SPEC, stream_min_seconds=30.0, spill_dir=str(spill))
    rows = list(prepare(row))
    assert rows == whole
    assert prepare.stats.streamed == 1 and prepare.stats.segments == len(rows) - 1
    long_rows = [r for r in rows if r["row_kind"] == SEGMENT and r["item_id"] == "long.flac"]
    assert [r["seg_index"] for r in long_rows] == list(range(10))
    assert {r["n_segments"] for r in long_rows} == {10}
    assert list(spill.iterdir()) == []


def test_a_codec_without_segment_plans_still_gets_its_segments_from_the_spill_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.wav").write_bytes(encode_sf(signal_of(25.0, 44100, 2), 44100, "WAV", "PCM_16"))
    row = _unit(folder, ["a.wav"])
    whole = list(PrepareUnit(SPEC, stream_min_seconds=None, isolate=False)(row))
    monkeypatch.delattr(SemantiCodec, "segment_plan")
    prepare = PrepareUnit(SPEC, stream_min_seconds=0.0, spill_dir=str(tmp_path / "spill"), isolate=False)
    assert list(prepare(row)) == whole and prepare.stats.streamed == 1


def test_prepare_stage_yields_rows_before_the_item_is_finished(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "long.wav").write_bytes(encode_sf(signal_of(400.0, 16000, 1), 16000, "WAV", "PCM_16"))
    spill = tmp_path / "spill"
    rows = PrepareUnit(SPEC, stream_min_seconds=0.0, spill_dir=str(spill), isolate=False)(
        _unit(folder, ["long.wav"])
    )
    first = next(rows)
    assert first["row_kind"] == SEGMENT and first["n_segments"] == 40
    assert len(list(spill.iterdir())) == 1  # the item is open: its spill file is being read
    rows.close()  # the consumer stops early (e.g. the task is cancelled): the file goes too
    assert list(spill.iterdir()) == []


@pytest.mark.slow  # three decode processes start (torch imports), one waits out a timeout
def test_a_decoder_that_dies_or_hangs_mid_spill_leaves_no_file(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    good = encode_sf(signal_of(3.0, 16000, 1), 16000, "WAV", "PCM_16")
    (folder / "a_kill.wav").write_bytes(SPILL_THEN_KILL + good)
    (folder / "b_hang.wav").write_bytes(SPILL_THEN_HANG + good)
    (folder / "c_good.wav").write_bytes(good)
    spill = tmp_path / "spill"
    prepare = PrepareUnit(
        SPEC, decode_fn=DECODE_FN, item_timeout_s=5.0, stream_min_seconds=0.0, spill_dir=str(spill)
    )
    rows = list(prepare(_unit(folder, ["a_kill.wav", "b_hang.wav", "c_good.wav"])))
    reasons = {r["item_id"]: r["reason"] for r in rows if r["row_kind"] == ERROR}
    assert reasons == {"a_kill.wav": "decode_crashed", "b_hang.wav": "decode_timeout"}
    assert {r["item_id"] for r in rows if r["row_kind"] == SEGMENT} == {"c_good.wav"}
    assert [r["n_items"] for r in rows if r["row_kind"] == UNIT] == [3]
    assert list(spill.iterdir()) == []


def test_spill_files_of_dead_workers_are_swept(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"{dead_pid}-0-0123456789ab.f32"
    mine = tmp_path / f"{os.getpid()}-0-0123456789ab.f32"
    parent = tmp_path / f"{os.getppid()}-1-0123456789ab.f32"
    other = tmp_path / "notes.txt"
    for path in (stale, mine, parent, other):
        path.write_bytes(b"x")
    assert sweep_spill_dir(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (mine, parent, other))


# --- a tokenize job (Ray) ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_streamed_long_file_gets_the_tokens_of_encode_path(ray_local, tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    paths = [root / "long.flac", root / "mono.wav"]
    sf.write(paths[0], signal_of(330.0, 44100, 2, seed=3), 44100, subtype="PCM_24")  # 5.5 min, 7 calls
    sf.write(paths[1], signal_of(200.0, 22050, 1, seed=4), 22050, subtype="PCM_16")  # 2 calls
    spill = tmp_path / "spill"
    config = TokenizeConfig(
        input=str(root),
        output=str(tmp_path / "out"),
        files_per_unit=4,
        progress_interval_s=60,
        stream_min_seconds=60.0,
        max_spill_bytes=64 * 2**20,
        spill_dir=str(spill),
        **TINY,
    )
    run_tokenize(config)
    fs, _ = open_filesystem(config.output)
    layout = OutputLayout.for_fingerprint(config.output, job_fingerprint(config))
    rows = {r["id"]: r for r in load_tokens(fs, layout).to_pylist()}
    assert load_errors(fs, layout).num_rows == 0
    codec = SemantiCodec(50, 16384, weights="random:0", size="tiny", device="cpu")
    for path in paths:
        direct = codec.encode(path)[0].cpu().numpy()
        got = np.stack([rows[path.name]["semantic_tokens"], rows[path.name]["acoustic_tokens"]], axis=1)
        np.testing.assert_array_equal(got, direct, err_msg=path.name)
    assert spill.is_dir() and list(spill.iterdir()) == []  # used, and cleaned
