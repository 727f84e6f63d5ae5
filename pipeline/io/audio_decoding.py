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
the budget (unless the item is streamed, below). Working memory is a multiple of the decoded size
(`bench/prepare_memory.py decode`, PCM16 WAV, peak RSS growth / decoded float32 size): official
3.7x (44.1 kHz stereo) to 7.8x (48 kHz mono, the convolution's unfolded input), soxr-hq 1.3-1.7x.
Size worker memory as max_decoded_bytes x 8.

Long items, streamed (``spill_path=`` and ``stream_min_seconds=``): an item of
``stream_min_seconds`` or more (from the header, or the running count when the header has no
length) is never held whole. Its frames are decoded in blocks, checked, resampled in pieces
(`codec.resample.CodecInputStream`: the official filter in calls of one fixed shape, bit-identical
to the whole-clip call; soxr's stream equals its one-shot call) and written as float32 16 kHz mono
to ``spill_path``; the result is a `SpilledAudio` (path and counts), not samples. Its budget is
then disk, not memory (``max_decoded_bytes`` does not apply to it): the file may not exceed
``max_spill_bytes`` (header estimate first, then the running size; with ``max_seconds``, what
bounds a decompression bomb), and the spill folder must keep SPILL_FREE_RESERVE_BYTES free (checked
before and while writing). Memory stays flat: a few calls' worth of frames
(`bench/prepare_memory.py prepare`). Shorter items keep the in-memory path and its budget, so a
short item that decodes huge (many channels at a high rate) is still "too_large": the streaming
decision is by duration only. Without ``spill_path`` nothing changes.

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
                   ran out of memory; streamed: the spill       (streamed: raise max_spill_bytes)
                   file over ``max_spill_bytes``
non_finite         NaN or inf samples after decoding            the file is corrupt: re-export it
out_of_range       finite samples with peak |x| above           re-export it scaled to [-1, 1]; it
                   MAX_ABS_SAMPLE                               is likely unscaled PCM or garbage
spill_failed       a streamed item could not be written to      free disk on the worker, or point
                   its spill file (disk below the reserve,      spill_dir at a larger local disk;
                   full, or an I/O error)                       then retry the failed items
=================  ===========================================  ====================================

No other exception escapes `decode_audio` for bad data: unexpected errors from soundfile, PyAV,
numpy or torch become "undecodable" (MemoryError "too_large"). Bad arguments raise ValueError.
"""

from __future__ import annotations

import errno
import io
import math
import os
import shutil
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import soundfile as sf
import soxr

from pipeline.records import DecodedAudio

TARGET_SR = 16000
DEFAULT_MAX_SECONDS = 4 * 3600.0
DEFAULT_MAX_DECODED_BYTES = 2 * 1024**3
DEFAULT_MAX_SPILL_BYTES = 2 * 1024**3  # 16 kHz float32: 9.3 h, above the default max_seconds (4 h)
SPILL_FREE_RESERVE_BYTES = 512 * 1024**2  # a streamed decode never takes its spill folder below this
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
    "too_large": "decoded size over max_decoded_bytes (streamed: over max_spill_bytes), or out of memory",
    "non_finite": "NaN or inf samples",
    "out_of_range": f"finite samples with peak |x| above {MAX_ABS_SAMPLE:g}",
    "spill_failed": "a streamed item could not be written to its local spill file (disk full or I/O error)",
}

# Containers libsndfile cannot read: go straight to PyAV for these.
_PYAV_FIRST_EXTS = {".m4a", ".aac", ".mp4", ".webm", ".mka", ".mkv", ".wma", ".amr", ".3gp"}
# libsndfile reports SF_COUNT_MAX frames (or nonsense) when a stream does not say its length.
_UNKNOWN_FRAMES = 1 << 62
_BLOCK_BYTES = 4 * 1024**2
_STREAM_BLOCK_BYTES = 16 * 1024**2  # decoded frames read per block when streaming
_SPILL_CHECK_BYTES = 64 * 1024**2  # free disk is checked again after this many bytes written
_FLOAT_BYTES = 4

ChannelPolicy = Literal["first", "mean"]
Resampler = Literal["official", "soxr-hq"]


class AudioDecodeError(Exception):
    """Decoding failed; ``reason`` is a stable short code for the error row (see REASONS)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _FinalError(AudioDecodeError):
    """An "undecodable" that the next decoder must not retry (the audio was read; resampling failed)."""


@dataclass(frozen=True)
class SpilledAudio:
    """A long item decoded to a local file instead of memory: `num_samples` float32 16 kHz mono
    samples at the start of `path` (raw, native byte order). The caller owns and deletes the file."""

    path: str
    num_samples: int
    source_sample_rate: int
    source_channels: int

    @property
    def duration_s(self) -> float:
        return float(self.num_samples) / TARGET_SR


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
        self.check_duration(frames, sr, where=where)
        self.check_memory(frames, sr, channels, where=where)

    def check_duration(self, frames: float, sr: int, *, where: str) -> None:
        if frames > self.max_seconds * sr:
            raise AudioDecodeError(
                "too_long", f"{where}: {frames / sr:.1f}s exceeds max_seconds={self.max_seconds:g}"
            )

    def memory_bytes(self, frames: float, sr: int, channels: int) -> float:
        """Float32 bytes an in-memory decode of `frames` frames holds (decoded, or resampled if more)."""
        decoded = frames * max(channels, 1) * _FLOAT_BYTES
        resampled = math.ceil(frames * self.target_sr / sr) * _FLOAT_BYTES
        if self.resample_all:
            resampled *= max(channels, 1)
        return max(decoded, resampled)

    def check_memory(self, frames: float, sr: int, channels: int, *, where: str) -> None:
        size = self.memory_bytes(frames, sr, channels)
        if size > self.max_bytes:
            raise AudioDecodeError(
                "too_large",
                f"{where}: {size / 2**20:.0f} MiB decoded "
                f"({frames:.0f} frames x {channels} ch) exceeds max_decoded_bytes="
                f"{self.max_bytes:.0f}",
            )

    def spill_bytes(self, frames: float, sr: int) -> int:
        """Bytes of the 16 kHz float32 file a streamed decode of `frames` frames writes."""
        return math.ceil(frames * self.target_sr / sr) * _FLOAT_BYTES


@dataclass(frozen=True)
class _StreamPolicy:
    """When and where a long item is streamed to disk instead of decoded in memory."""

    spill_path: str
    min_seconds: float  # items this long (source frames / rate) or longer are streamed
    max_spill_bytes: float


def _select_channels(x: np.ndarray, policy: str) -> np.ndarray:
    """[frames, channels] -> [frames] according to the channel policy."""
    if x.ndim == 1:
        return x
    if policy == "first":
        return x[:, 0]
    if policy == "mean":
        return x.mean(axis=1, dtype=np.float64).astype(np.float32)
    raise ValueError(f"unknown channel_policy {policy!r} (use 'first' or 'mean')")


class _ViewReader(io.RawIOBase):
    """A seekable read-only file over a buffer, without copying it (io.BytesIO copies a bytearray):
    the decode process receives an item's bytes into a bytearray and decodes them in place."""

    def __init__(self, data: Any) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        count = max(0, min(out.nbytes, self._view.nbytes - self._pos))
        out[:count] = self._view[self._pos : self._pos + count]
        self._pos += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._view.nbytes}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos


def _open_bytes(data: Any) -> io.IOBase:
    return io.BytesIO(data) if isinstance(data, bytes) else _ViewReader(data)


class _Output:
    """Where one decoder's frames go: kept in memory (the whole path), or, once the item is known to
    be long (header, or running count), resampled in pieces straight into the spill file."""

    def __init__(
        self, limits: _Limits, stream: _StreamPolicy | None, channel_policy: str, resampler: str
    ) -> None:
        self.limits = limits
        self.stream = stream
        self.channel_policy = channel_policy
        self.resampler = resampler
        self.sr = 0
        self.channels = 0
        self.frames = 0
        self._blocks: list[np.ndarray] = []
        self._streaming = False  # decided: this item goes to the spill file
        self._spill: _Spill | None = None

    @property
    def streaming(self) -> bool:
        return self._streaming

    def block_frames(self, channels: int) -> int:
        size = _STREAM_BLOCK_BYTES if self._streaming else _BLOCK_BYTES
        return max(1, size // (_FLOAT_BYTES * max(channels, 1)))

    def open(self, sr: int, channels: int, claimed: float | None) -> None:
        """The decoder knows the rate, channel count and (maybe) length: check them, decide the path."""
        self.sr, self.channels = sr, channels
        if claimed is None:
            return
        self.limits.check_duration(claimed, sr, where="header")
        if self._wants_stream(claimed) and self._may_stream(claimed, channels, "header"):
            self._start_stream(claimed)
            return
        self.limits.check_memory(claimed, sr, channels, where="header")

    def add(self, block: np.ndarray) -> None:
        """Frames [n, channels] float32, in order. Raises AudioDecodeError past a limit."""
        if not block.shape[0]:
            return
        self.frames += block.shape[0]
        self.limits.check_duration(self.frames, self.sr, where="while decoding")
        if not self._streaming and self._wants_stream(self.frames):
            if self._may_stream(self.frames, block.shape[1], "while decoding"):
                self._start_stream(None)
                for kept in self._blocks:
                    self._spill_block(kept)
                self._blocks = []
        if self._streaming:
            self._spill_block(block)
            return
        self.limits.check_memory(self.frames, self.sr, block.shape[1], where="while decoding")
        self._blocks.append(block)

    def decoded(self) -> tuple[np.ndarray, int, int]:
        """The in-memory path's frames [n, channels], rate and channel count."""
        if not self._blocks:
            return np.zeros((0, max(self.channels, 1)), dtype=np.float32), self.sr, max(self.channels, 1)
        x = self._blocks[0] if len(self._blocks) == 1 else np.concatenate(self._blocks)
        self._blocks = []
        return x.astype(np.float32, copy=False), self.sr, x.shape[1]

    def finish(self) -> SpilledAudio | None:
        """Streamed: close the spill file and describe it (None: the item stayed in memory)."""
        if not self._streaming:
            return None
        if self._spill is None:  # streamed from the header on, and not one frame came
            raise AudioDecodeError("empty_audio", "0 samples")
        samples = self._spill.finish()
        return SpilledAudio(self._spill.path, samples, self.sr, self._spill.channels)

    def discard(self) -> None:
        """This decoder failed: drop what it produced (the spill file included)."""
        self._blocks = []
        if self._spill is not None:
            self._spill.abort()
            self._spill = None

    # --- streaming ---

    def _wants_stream(self, frames: float) -> bool:
        return self.stream is not None and frames >= self.stream.min_seconds * self.sr

    def _may_stream(self, frames: float, channels: int, where: str) -> bool:
        """Whether streaming gives this item's exact samples here; if not, in memory it stays (or it
        is too_large). The official filter in pieces is probed once per rate and layout."""
        if self.resampler != "official" or self.sr == self.limits.target_sr:
            return True
        from codec.resample import exact_in_pieces

        width = channels if self.channel_policy == "first" else 1
        if exact_in_pieces(self.sr, self.limits.target_sr, width):
            return True
        self.stream = None  # not exact on this machine: never stream this item
        if self.limits.memory_bytes(frames, self.sr, channels) > self.limits.max_bytes:
            self.limits.check_memory(
                frames,
                self.sr,
                channels,
                where=f"{where} (streamed resampling is not bit-identical on this machine)",
            )
        return False

    def _start_stream(self, claimed: float | None) -> None:
        assert self.stream is not None
        expected = self.limits.spill_bytes(claimed, self.sr) if claimed is not None else 0
        if expected > self.stream.max_spill_bytes:
            raise AudioDecodeError(
                "too_large",
                f"header: {expected / 2**20:.0f} MiB of 16 kHz samples to spill exceeds "
                f"max_spill_bytes={self.stream.max_spill_bytes:.0f}",
            )
        _check_free_disk(self.stream.spill_path, expected)
        self._streaming = True

    def _spill_block(self, block: np.ndarray) -> None:
        if self._spill is None:
            assert self.stream is not None
            self._spill = _Spill(
                self.stream,
                self.sr,
                block.shape[1],
                self.channel_policy,
                self.resampler,
                self.limits.target_sr,
            )
        self._spill.add(block)


def _check_free_disk(path: str, need: int) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise AudioDecodeError("spill_failed", f"spill folder {folder}: {exc.strerror or exc}") from None
    if free < need + SPILL_FREE_RESERVE_BYTES:
        raise AudioDecodeError(
            "spill_failed",
            f"{free / 2**20:.0f} MiB free in the spill folder {folder}; this item needs "
            f"{need / 2**20:.0f} MiB and {SPILL_FREE_RESERVE_BYTES / 2**20:.0f} MiB stay free",
        )


class _Spill:
    """One streamed item: value checks, resampling in pieces, float32 16 kHz written to the file."""

    def __init__(
        self, stream: _StreamPolicy, sr: int, channels: int, channel_policy: str, resampler: str, target: int
    ) -> None:
        self.path = stream.spill_path
        self.max_bytes = stream.max_spill_bytes
        self.channels = channels
        self.channel_policy = channel_policy
        self.resampler = resampler
        self.samples = 0
        self._unchecked = 0  # bytes written since free disk was last checked
        self._hi, self._lo, self._bad = -math.inf, math.inf, 0
        self._soxr = None
        self._official = None
        if resampler == "official":
            from codec.resample import CodecInputStream

            self._official = CodecInputStream(sr, target, channels if channel_policy == "first" else 1)
        elif sr != target:
            self._soxr = soxr.ResampleStream(sr, target, 1, dtype="float32", quality=RESAMPLE_QUALITY)
        try:  # never an existing file: the caller names a fresh path
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise AudioDecodeError("spill_failed", f"cannot create {self.path}: {exc.strerror}") from None

    def add(self, block: np.ndarray) -> None:
        hi, lo = float(block.max()), float(block.min())
        if not (math.isfinite(hi) and math.isfinite(lo)):
            self._bad += int(np.size(block) - np.count_nonzero(np.isfinite(block)))
        else:
            self._hi, self._lo = max(self._hi, hi), min(self._lo, lo)
        if self._bad or max(self._hi, -self._lo) > MAX_ABS_SAMPLE:
            return  # the item fails when it ends (as in memory: limits first, values after)
        try:
            self._write(self._resample(block))
        except (AudioDecodeError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - never anything but AudioDecodeError for bad data
            raise _FinalError("undecodable", f"resampling: {type(exc).__name__}: {exc}") from None

    def finish(self) -> int:
        """Check the values seen, flush the resampler, close the file; the number of samples."""
        if self._bad:
            raise AudioDecodeError("non_finite", f"{self._bad} NaN/inf samples")
        peak = max(self._hi, -self._lo)
        if peak > MAX_ABS_SAMPLE:
            raise AudioDecodeError("out_of_range", f"peak |x| = {peak:.3g} exceeds {MAX_ABS_SAMPLE:g}")
        self._write(self._flush())
        os.close(self._fd)
        self._fd = -1
        if self.samples == 0:
            raise AudioDecodeError("empty_audio", "0 samples after resampling")
        return self.samples

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _resample(self, block: np.ndarray) -> np.ndarray:
        if self._official is not None:
            frames = block if self.channel_policy == "first" else _select_channels(block, self.channel_policy)
            return self._official.push(frames)
        mono = np.ascontiguousarray(_select_channels(block, self.channel_policy), dtype=np.float32)
        return mono if self._soxr is None else self._soxr.resample_chunk(mono, last=False)

    def _flush(self) -> np.ndarray:
        if self._official is not None:
            return self._official.finish()
        if self._soxr is None:
            return np.zeros(0, dtype=np.float32)
        return self._soxr.resample_chunk(np.zeros(0, dtype=np.float32), last=True)

    def _write(self, samples: np.ndarray) -> None:
        data = np.ascontiguousarray(samples, dtype=np.float32)
        if not data.size:
            return
        size = (self.samples + data.shape[0]) * _FLOAT_BYTES
        if size > self.max_bytes:
            raise AudioDecodeError(
                "too_large",
                f"while decoding: {size / 2**20:.0f} MiB of 16 kHz samples spilled exceeds "
                f"max_spill_bytes={self.max_bytes:.0f}",
            )
        self._unchecked += data.nbytes
        if self._unchecked >= _SPILL_CHECK_BYTES:
            _check_free_disk(self.path, 0)
            self._unchecked = 0
        view = data.data.cast("B")
        try:
            while view.nbytes:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            what = "disk full" if exc.errno == errno.ENOSPC else exc.strerror
            raise AudioDecodeError("spill_failed", f"writing {self.path}: {what}") from None
        self.samples += data.shape[0]


def _read_soundfile(data: Any, limits: _Limits, output: _Output) -> None:
    with sf.SoundFile(_open_bytes(data)) as f:
        sr, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
        limits.check_format(sr, channels)
        known = 0 <= frames < _UNKNOWN_FRAMES
        output.open(sr, channels, frames if known else None)
        if known and not output.streaming:
            # libsndfile never returns more than the header's frame count: one read, within budget.
            x = f.read(frames, dtype="float32", always_2d=True)
            if x.shape[0] < frames // 2:  # a header that overstates: do not keep its buffer alive
                x = x.copy()
            output.add(x)
            return
        # Unknown length, or streamed: blocks, each checked against the budget before it is kept.
        while True:
            chunk = f.read(output.block_frames(channels), dtype="float32", always_2d=True)
            if chunk.shape[0] == 0:
                break
            output.add(chunk)


def _pyav_header_frames(container, stream, sr: int) -> float | None:
    """Frames the container claims (stream duration, else container duration); None if unknown."""
    import av

    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base) * sr
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base * sr
    return None


def _read_pyav(data: Any, limits: _Limits, output: _Output) -> None:
    import av

    try:
        container = av.open(_open_bytes(data), mode="r")
    except Exception as exc:  # noqa: BLE001 - FFmpeg raises many types for garbage
        raise AudioDecodeError("undecodable", f"pyav: {type(exc).__name__}: {exc}") from None
    try:
        if not container.streams.audio:
            raise AudioDecodeError("undecodable", "no audio stream")
        stream = container.streams.audio[0]
        sr = int(stream.codec_context.sample_rate or stream.rate or 0)
        header_channels = int(stream.codec_context.channels or 0) or None
        limits.check_format(sr, header_channels)
        output.open(sr, header_channels or 1, _pyav_header_frames(container, stream, sr))
        channels = 0
        # Converts only the sample format, to PACKED float (rate/layout unchanged). Not planar "fltp":
        # PyAV 18's to_ndarray() of planar frames with 8+ channels reads past the planes (segfault).
        resampler = av.AudioResampler(format="flt")

        def keep(out) -> None:
            nonlocal channels
            count = int(out.layout.nb_channels)
            arr = out.to_ndarray().reshape(-1, count)  # [1, n * channels] interleaved -> [n, channels]
            if channels and count != channels:
                raise AudioDecodeError("undecodable", "channel count changes mid-stream")
            channels = count
            output.add(arr.astype(np.float32, copy=False))

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
    data: bytes | bytearray | memoryview,
    *,
    target_sr: int = TARGET_SR,
    channel_policy: ChannelPolicy = "first",
    name_hint: str | None = None,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    resampler: Resampler = "official",
    max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES,
    spill_path: str | None = None,
    stream_min_seconds: float | None = None,
    max_spill_bytes: int | None = DEFAULT_MAX_SPILL_BYTES,
) -> DecodedAudio | SpilledAudio:
    """Decode bytes to float32 mono at target_sr; raise AudioDecodeError for bad inputs.

    ``name_hint`` (a file name or URI) only chooses which decoder to try first.
    ``max_seconds`` guards against decompression bombs (reason "too_long"); None disables it.
    ``max_decoded_bytes`` bounds the decoded (and resampled) float32 size (reason "too_large"),
    checked from the header before reading and while decoding; None disables it.
    ``resampler``: "official" (bit-identical to `SemantiCodec.load_audio`) or "soxr-hq".
    ``spill_path`` (a fresh path on local disk) and ``stream_min_seconds`` turn on streaming: an item
    that long or longer is written there (at most ``max_spill_bytes``; ``max_decoded_bytes`` does not
    apply to it) and a `SpilledAudio` returned, with the samples the in-memory path gives. On error
    no file is left behind.
    """
    if channel_policy not in ("first", "mean"):
        raise ValueError(f"unknown channel_policy {channel_policy!r} (use 'first' or 'mean')")
    if resampler not in RESAMPLERS:
        raise ValueError(f"unknown resampler {resampler!r} (use one of {RESAMPLERS})")
    if stream_min_seconds is not None and stream_min_seconds < 0:
        raise ValueError(f"stream_min_seconds must be >= 0, got {stream_min_seconds}")
    if not data:
        raise AudioDecodeError("empty_audio", "0 bytes")
    limits = _Limits(
        max_seconds=float("inf") if max_seconds is None else float(max_seconds),
        max_bytes=float("inf") if max_decoded_bytes is None else float(max_decoded_bytes),
        target_sr=int(target_sr),
        resampler=resampler,
        channel_policy=channel_policy,
    )
    stream = None
    if spill_path is not None and stream_min_seconds is not None:
        spill_cap = float("inf") if max_spill_bytes is None else float(max_spill_bytes)
        stream = _StreamPolicy(spill_path, stream_min_seconds, spill_cap)
    ext = os.path.splitext(name_hint or "")[1].lower()
    decoders = [_read_soundfile, _read_pyav]
    if ext in _PYAV_FIRST_EXTS:
        decoders.reverse()
    errors: list[str] = []
    output = None
    for decoder in decoders:
        attempt = _Output(limits, stream, channel_policy, resampler)
        try:
            decoder(data, limits, attempt)
            spilled = attempt.finish()
        except AudioDecodeError as exc:
            attempt.discard()
            if exc.reason != "undecodable" or isinstance(exc, _FinalError):
                raise
            errors.append(exc.detail)
            continue
        except MemoryError:
            attempt.discard()
            raise AudioDecodeError("too_large", f"out of memory in {decoder.__name__[6:]}") from None
        except Exception as exc:  # noqa: BLE001 - any reader failure on bad data: try the next one
            attempt.discard()
            errors.append(f"{decoder.__name__[6:]}: {type(exc).__name__}: {exc}")
            continue
        except BaseException:  # KeyboardInterrupt, SystemExit: still no file left behind
            attempt.discard()
            raise
        if spilled is not None:
            return spilled
        output = attempt
        break
    if output is None:
        raise AudioDecodeError("undecodable", "; ".join(errors)[:500])
    x, sr, channels = output.decoded()
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
