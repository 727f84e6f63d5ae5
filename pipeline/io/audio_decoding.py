"""Encoded audio bytes -> float32 mono 16 kHz, or a typed AudioDecodeError.

soundfile (libsndfile) is tried first: it is fast and covers wav/flac/ogg/opus/mp3. PyAV (bundled
FFmpeg) covers the rest (m4a/aac/webm/mp4) and anything libsndfile rejects.

Resampling (``resampler=``):
- "official" (default): `codec.resample.to_codec_input`, the function `SemantiCodec.load_audio` uses
  (the official reader's torchaudio-equivalent Hann-windowed sinc). With channel policy "first" it
  resamples ALL channels and then keeps channel 0, exactly as the official code does, so the pipeline
  and `SemantiCodec.encode(path)` give bit-identical samples, hence tokens. With "mean" the channels
  are averaged first and the mono signal is resampled with the same filter.
- "soxr-hq": soxr "HQ" (20-bit precision, steep passband), channel selected before resampling; faster
  on multichannel input, but its samples (and so some tokens) differ from the official ones.

Channel policy: "first" keeps channel 0 (official); "mean" averages the channels.

Bounded memory: before any sample is read, the size of the decoded audio is estimated from the
header (frames x channels x 4 bytes as float32, and the resampled output likewise) and refused
above ``max_decoded_bytes``; while decoding, the running size and duration are checked again, so
headers that lie (PyAV estimates, unknown frame counts) cannot make the decoder allocate more than
the budget. Working memory is a multiple of the decoded size (bench/prepare_memory.py, PCM16 WAV,
peak RSS growth / decoded float32 size): official 3.7x (44.1 kHz stereo) to 7.8x (48 kHz mono, the
convolution's unfolded input), soxr-hq 1.3-1.7x. Size worker memory as max_decoded_bytes x 8.

Sample values: decoded floats are expected roughly in [-1, 1]. Float files legitimately go somewhat
above 1.0 (inter-sample overs, unnormalised mixes), so the rule is: the peak |x| must not exceed
MAX_ABS_SAMPLE = 64.0 (+36 dBFS). Anything louder is not audio at the scale the codec was trained
on: typically integer PCM stored as float without scaling (peaks near 32768) or garbage bytes read
as floats (peaks like 1e30).

Failure taxonomy (``AudioDecodeError.reason``; every bad input ends in one of these, see REASONS):

=================  ===========================================  ====================================
reason             meaning                                      what to do
=================  ===========================================  ====================================
empty_audio        0 bytes, or a valid file with 0 samples      nothing: there is no audio
undecodable        no decoder could read it (not audio,         inspect/re-fetch the file; convert
                   truncated/damaged header, unknown codec,     it with ffmpeg if it plays elsewhere
                   invalid rate or channel count)
unsupported_rate   sample rate outside [MIN_SAMPLE_RATE,        resample the file to a common rate;
                   MAX_SAMPLE_RATE], or (official resampler)    or run with resampler="soxr-hq"
                   a rate whose official filter bank would
                   exceed MAX_RESAMPLE_KERNEL_BYTES
too_long           duration over ``max_seconds`` (header or     cut the file, or raise max_seconds
                   while decoding)
too_large          decoded size over ``max_decoded_bytes``      cut it, or raise max_decoded_bytes
                   (header or while decoding), or the decoder   on workers with the memory for it
                   ran out of memory
non_finite         NaN or inf samples after decoding            the file is corrupt: re-export it
out_of_range       finite samples with peak |x| above           re-export it scaled to [-1, 1]; it
                   MAX_ABS_SAMPLE                               is likely unscaled PCM or garbage
=================  ===========================================  ====================================

No other exception escapes `decode_audio` for bad data: unexpected errors from soundfile, PyAV,
numpy or torch become "undecodable" (MemoryError "too_large"). Bad arguments raise ValueError.
"""

from __future__ import annotations

import io
import math
import os
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

from pipeline.records import DecodedAudio

TARGET_SR = 16000
DEFAULT_MAX_SECONDS = 4 * 3600.0
DEFAULT_MAX_DECODED_BYTES = 2 * 1024**3
RESAMPLE_QUALITY = "HQ"
RESAMPLERS = ("official", "soxr-hq")
MAX_ABS_SAMPLE = 64.0
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768_000
# The official filter bank for orig -> new Hz is (new/g) x (orig/g + taps) floats, g = gcd: tiny for
# common rates (44.1 kHz: 0.3 MB), gigabytes when the rates share no factor (44101 Hz: 2.8 GB).
MAX_RESAMPLE_KERNEL_BYTES = 32 * 1024**2

REASONS = {
    "empty_audio": "0 bytes, or a valid file with 0 samples",
    "undecodable": "no decoder could read it (not audio, damaged header, unknown codec, bad rate/channels)",
    "unsupported_rate": "sample rate out of range, or too costly for the official resampler",
    "too_long": "duration over max_seconds",
    "too_large": "decoded size over max_decoded_bytes, or out of memory while decoding",
    "non_finite": "NaN or inf samples",
    "out_of_range": f"finite samples with peak |x| above {MAX_ABS_SAMPLE:g}",
}

# Containers libsndfile cannot read: go straight to PyAV for these.
_PYAV_FIRST_EXTS = {".m4a", ".aac", ".mp4", ".webm", ".mka", ".mkv", ".wma", ".amr", ".3gp"}
# libsndfile reports SF_COUNT_MAX frames (or nonsense) when a stream does not say its length.
_UNKNOWN_FRAMES = 1 << 62
_BLOCK_BYTES = 4 * 1024**2
_FLOAT_BYTES = 4

ChannelPolicy = Literal["first", "mean"]
Resampler = Literal["official", "soxr-hq"]


class AudioDecodeError(Exception):
    """Decoding failed; ``reason`` is a stable short code for the error row (see REASONS)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _Limits:
    """The duration and memory budget of one decode, checked from headers and while decoding."""

    def __init__(
        self, max_seconds: float, max_bytes: float, target_sr: int, resampler: str, channel_policy: str
    ) -> None:
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.target_sr = target_sr
        self.resampler = resampler
        # The official "first" path resamples every channel; the others resample one.
        self.resample_all = resampler == "official" and channel_policy == "first"

    def check_format(self, sr: int, channels: int | None) -> None:
        """Rate and channel count, before any sample is read."""
        if sr <= 0:
            raise AudioDecodeError("undecodable", f"invalid sample rate {sr}")
        if channels is not None and channels <= 0:
            raise AudioDecodeError("undecodable", f"invalid channel count {channels}")
        if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
            raise AudioDecodeError(
                "unsupported_rate", f"{sr} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz"
            )
        if self.resampler == "official":
            from codec.resample import kernel_bytes

            size = kernel_bytes(sr, self.target_sr)
            if size > MAX_RESAMPLE_KERNEL_BYTES:
                raise AudioDecodeError(
                    "unsupported_rate",
                    f"official resampling {sr} -> {self.target_sr} Hz "
                    f"needs a {size / 2**20:.0f} MiB filter; use resampler='soxr-hq'",
                )

    def check_length(self, frames: float, sr: int, channels: int, *, where: str) -> None:
        """Duration and decoded size of `frames` frames (header claim or running count)."""
        if frames > self.max_seconds * sr:
            raise AudioDecodeError(
                "too_long", f"{where}: {frames / sr:.1f}s exceeds max_seconds={self.max_seconds:g}"
            )
        decoded = frames * max(channels, 1) * _FLOAT_BYTES
        resampled = math.ceil(frames * self.target_sr / sr) * _FLOAT_BYTES
        if self.resample_all:
            resampled *= max(channels, 1)
        size = max(decoded, resampled)
        if size > self.max_bytes:
            raise AudioDecodeError(
                "too_large",
                f"{where}: {size / 2**20:.0f} MiB decoded "
                f"({frames:.0f} frames x {channels} ch) exceeds max_decoded_bytes="
                f"{self.max_bytes:.0f}",
            )


def _select_channels(x: np.ndarray, policy: str) -> np.ndarray:
    """[frames, channels] -> [frames] according to the channel policy."""
    if x.ndim == 1:
        return x
    if policy == "first":
        return x[:, 0]
    if policy == "mean":
        return x.mean(axis=1, dtype=np.float64).astype(np.float32)
    raise ValueError(f"unknown channel_policy {policy!r} (use 'first' or 'mean')")


def _decode_soundfile(data: bytes, limits: _Limits) -> tuple[np.ndarray, int, int]:
    with sf.SoundFile(io.BytesIO(data)) as f:
        sr, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
        limits.check_format(sr, channels)
        if 0 <= frames < _UNKNOWN_FRAMES:
            # libsndfile never returns more than the header's frame count: one read, within budget.
            limits.check_length(frames, sr, channels, where="header")
            x = f.read(frames, dtype="float32", always_2d=True)
            if x.shape[0] < frames // 2:  # a header that overstates: do not keep its buffer alive
                x = x.copy()
            return x, sr, channels
        # Unknown length: blocks, each checked against the budget before it is kept.
        block = max(1, _BLOCK_BYTES // (_FLOAT_BYTES * channels))
        chunks: list[np.ndarray] = []
        total = 0
        while True:
            chunk = f.read(block, dtype="float32", always_2d=True)
            if chunk.shape[0] == 0:
                break
            total += chunk.shape[0]
            limits.check_length(total, sr, channels, where="while decoding")
            chunks.append(chunk)
    if not chunks:
        return np.zeros((0, channels), dtype=np.float32), sr, channels
    x = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return x, sr, channels


def _pyav_header_frames(container, stream, sr: int) -> float | None:
    """Frames the container claims (stream duration, else container duration); None if unknown."""
    import av

    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base) * sr
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base * sr
    return None


def _decode_pyav(data: bytes, limits: _Limits) -> tuple[np.ndarray, int, int]:
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as exc:  # noqa: BLE001 - FFmpeg raises many types for garbage
        raise AudioDecodeError("undecodable", f"pyav: {type(exc).__name__}: {exc}") from None
    try:
        if not container.streams.audio:
            raise AudioDecodeError("undecodable", "no audio stream")
        stream = container.streams.audio[0]
        sr = int(stream.codec_context.sample_rate or stream.rate or 0)
        header_channels = int(stream.codec_context.channels or 0) or None
        limits.check_format(sr, header_channels)
        claimed = _pyav_header_frames(container, stream, sr)
        if claimed is not None:
            limits.check_length(claimed, sr, header_channels or 1, where="header")
        chunks: list[np.ndarray] = []
        total = 0
        channels = 0
        # Converts only the sample format, to PACKED float (rate/layout unchanged). Not planar "fltp":
        # PyAV 18's to_ndarray() of planar frames with 8+ channels reads past the planes (segfault).
        resampler = av.AudioResampler(format="flt")

        def keep(out) -> None:
            nonlocal total, channels
            count = int(out.layout.nb_channels)
            arr = out.to_ndarray().reshape(-1, count)  # [1, n * channels] interleaved -> [n, channels]
            if chunks and count != channels:
                raise AudioDecodeError("undecodable", "channel count changes mid-stream")
            channels = count
            total += arr.shape[0]
            limits.check_length(total, sr, channels, where="while decoding")
            chunks.append(arr)

        for frame in container.decode(stream):
            if frame.sample_rate and frame.sample_rate != sr:
                raise AudioDecodeError("undecodable", "sample rate changes mid-stream")
            for out in resampler.resample(frame):
                keep(out)
        for out in resampler.resample(None):
            keep(out)
    except (AudioDecodeError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise AudioDecodeError("undecodable", f"pyav: {type(exc).__name__}: {exc}") from None
    finally:
        container.close()
    if not chunks:
        return np.zeros((0, max(channels, 1)), dtype=np.float32), sr, max(channels, 1)
    x = np.concatenate(chunks).astype(np.float32, copy=False)
    return x, sr, channels


def _check_values(x: np.ndarray) -> None:
    """non_finite for NaN/inf, out_of_range for a peak above MAX_ABS_SAMPLE (no full-size temporaries)."""
    hi, lo = float(x.max()), float(x.min())  # NaN propagates through both
    if not (math.isfinite(hi) and math.isfinite(lo)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise AudioDecodeError("non_finite", f"{bad} NaN/inf samples")
    peak = max(hi, -lo)
    if peak > MAX_ABS_SAMPLE:
        raise AudioDecodeError("out_of_range", f"peak |x| = {peak:.3g} exceeds {MAX_ABS_SAMPLE:g}")


def _to_mono_target(
    x: np.ndarray, sr: int, target_sr: int, channel_policy: str, resampler: str
) -> np.ndarray:
    if resampler == "official":
        import torch

        from codec.resample import resample, to_codec_input

        if channel_policy == "first":
            return to_codec_input(x, sr, target_sr)
        mono = _select_channels(x, channel_policy)
        if sr == target_sr:
            return mono
        return resample(torch.from_numpy(np.ascontiguousarray(mono))[None], sr, target_sr)[0].numpy()
    mono = _select_channels(x, channel_policy)
    if sr != target_sr:
        mono = soxr.resample(mono, sr, target_sr, quality=RESAMPLE_QUALITY)
    return mono


def decode_audio(
    data: bytes,
    *,
    target_sr: int = TARGET_SR,
    channel_policy: ChannelPolicy = "first",
    name_hint: str | None = None,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    resampler: Resampler = "official",
    max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES,
) -> DecodedAudio:
    """Decode bytes to float32 mono at target_sr; raise AudioDecodeError for bad inputs.

    ``name_hint`` (a file name or URI) only chooses which decoder to try first.
    ``max_seconds`` guards against decompression bombs (reason "too_long"); None disables it.
    ``max_decoded_bytes`` bounds the decoded (and resampled) float32 size (reason "too_large"),
    checked from the header before reading and while decoding; None disables it.
    ``resampler``: "official" (bit-identical to `SemantiCodec.load_audio`) or "soxr-hq".
    """
    if channel_policy not in ("first", "mean"):
        raise ValueError(f"unknown channel_policy {channel_policy!r} (use 'first' or 'mean')")
    if resampler not in RESAMPLERS:
        raise ValueError(f"unknown resampler {resampler!r} (use one of {RESAMPLERS})")
    if not data:
        raise AudioDecodeError("empty_audio", "0 bytes")
    limits = _Limits(
        max_seconds=float("inf") if max_seconds is None else float(max_seconds),
        max_bytes=float("inf") if max_decoded_bytes is None else float(max_decoded_bytes),
        target_sr=int(target_sr),
        resampler=resampler,
        channel_policy=channel_policy,
    )
    ext = os.path.splitext(name_hint or "")[1].lower()
    decoders = [_decode_soundfile, _decode_pyav]
    if ext in _PYAV_FIRST_EXTS:
        decoders.reverse()
    errors: list[str] = []
    decoded = None
    for decoder in decoders:
        try:
            decoded = decoder(data, limits)
            break
        except AudioDecodeError as exc:
            if exc.reason != "undecodable":
                raise
            errors.append(exc.detail)
        except MemoryError:
            raise AudioDecodeError("too_large", f"out of memory in {decoder.__name__[8:]}") from None
        except Exception as exc:  # noqa: BLE001 - any reader failure on bad data: try the next one
            errors.append(f"{decoder.__name__[8:]}: {type(exc).__name__}: {exc}")
    if decoded is None:
        raise AudioDecodeError("undecodable", "; ".join(errors)[:500])
    x, sr, channels = decoded
    if x.shape[0] == 0:
        raise AudioDecodeError("empty_audio", "0 samples")
    _check_values(x)
    try:
        samples = np.ascontiguousarray(
            _to_mono_target(x, sr, int(target_sr), channel_policy, resampler), dtype=np.float32
        )
    except MemoryError:
        raise AudioDecodeError("too_large", f"out of memory resampling {x.shape} at {sr} Hz") from None
    except Exception as exc:  # noqa: BLE001 - never anything but AudioDecodeError for bad data
        raise AudioDecodeError("undecodable", f"resampling: {type(exc).__name__}: {exc}") from None
    if samples.shape[0] == 0:
        raise AudioDecodeError("empty_audio", "0 samples after resampling")
    return DecodedAudio(samples=samples, source_sample_rate=sr, source_channels=channels)
