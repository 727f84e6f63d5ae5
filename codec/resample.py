"""Band-limited resampling that matches the official reader (`torchaudio.functional.resample` defaults).

The official code resamples with a Hann-windowed sinc (6 zero crossings, roll-off 0.99) before
features; tokens of non-16 kHz files only match if we resample the same way. torchaudio itself does
not import beside CPU torch here, so this is our own implementation of that filter: a polyphase FIR
applied as a strided 1-D convolution, the kernel built in the waveform's dtype.

`to_codec_input` is the one place decoded frames become the codec's input (the official reader's
steps); `SemantiCodec.load_audio` and the pipeline's decoder both call it, so they agree by
construction. `kernel_bytes` tells what the filter for a rate pair costs before building it: for
rates with a small common divisor (e.g. 44101 Hz → 16 kHz) the official filter bank is gigabytes.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch.nn import functional as F

from .config import SAMPLE_RATE

ZERO_CROSSINGS = 6
ROLLOFF = 0.99


def _reduced(orig_rate: int, new_rate: int) -> tuple[int, int]:
    gcd = math.gcd(int(orig_rate), int(new_rate))
    return int(orig_rate) // gcd, int(new_rate) // gcd


def _width(orig: int, new: int) -> int:
    return math.ceil(ZERO_CROSSINGS * orig / (min(orig, new) * ROLLOFF))


def kernel_bytes(orig_rate: int, new_rate: int, itemsize: int = 4) -> int:
    """Bytes of the filter bank `resample` builds for this rate pair (0 when the rates are equal)."""
    if orig_rate == new_rate:
        return 0
    orig, new = _reduced(orig_rate, new_rate)
    return new * (2 * _width(orig, new) + orig) * itemsize


@functools.lru_cache(maxsize=16)
def _kernel(orig: int, new: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """Filters [new, 1, taps] for output phases 0..new-1, and the one-sided width in input samples."""
    cutoff = min(orig, new) * ROLLOFF
    width = _width(orig, new)
    taps = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig
    phase = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new
    t = ((phase + taps) * cutoff).clamp(-ZERO_CROSSINGS, ZERO_CROSSINGS)
    window = torch.cos(t * math.pi / ZERO_CROSSINGS / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones((), dtype=dtype), t.sin() / t)
    return sinc * (window * (cutoff / orig)), width


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample [..., N] from `orig_rate` to `new_rate` Hz; output length ceil(N·new/orig)."""
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} → {new_rate}")
    if orig_rate == new_rate:
        return waveform
    orig, new = _reduced(orig_rate, new_rate)
    kernel, width = _kernel(orig, new, waveform.dtype)
    shape = waveform.shape
    flat = waveform.reshape(-1, shape[-1])
    length = flat.shape[-1]
    padded = F.pad(flat, (width, width + orig))
    out = F.conv1d(padded[:, None], kernel.to(waveform.device), stride=orig)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    out = out[..., : math.ceil(new * length / orig)]
    return out.reshape(*shape[:-1], out.shape[-1])


def to_codec_input(frames: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decoded frames [frames, channels] (or [frames]) → float32 mono at `target_rate`, officially.

    The official reader's steps: a [channels, samples] float32 tensor, every channel resampled
    together, then channel 0. Channel 0 is taken after resampling on purpose: the convolution may
    round differently for another batch shape, and the official tokens come from this one.
    """
    data = np.asarray(frames, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise ValueError(f"frames must be [frames, channels], got shape {data.shape}")
    wave = torch.from_numpy(np.ascontiguousarray(data.T))  # [channels, samples]
    if sample_rate != target_rate:
        wave = resample(wave, sample_rate, target_rate)
    return wave[0].numpy().copy()  # owns its memory: no view of the caller's frames or of all channels


# --- the same resampling in pieces, for clips too long to hold ------------------------------------

# Input frames per convolution call, at least, and about this many input bytes per call. Every
# call has the same shape, and far above the ~20k-sample size under which PyTorch's CPU conv1d
# switches from oneDNN to its reference kernel (the two round differently): a long clip resampled
# whole takes oneDNN too, and oneDNN computes each output the same way wherever it lies in the call
# (measured: whole == pieces, bit for bit, 8-192 kHz, mono/stereo, 1 s to 3 h, 1 or 2 threads).
# Smaller calls cost a fixed overhead each (65k frames: 15x slower than whole; 4M: about even).
STREAM_MIN_CALL_FRAMES = 1 << 20
STREAM_CALL_BYTES = 1 << 24
_SMALLEST_CALL_FRAMES = 1 << 15  # tests may go this low; oneDNN still takes every call


class CodecInputStream:
    """`to_codec_input` in pieces: push decoded frames, get the float32 samples of the whole-clip call.

    Output sample k of the official filter is one dot product of the kernel with a window of the
    zero-padded input; this class cuts the convolution along its output axis into calls of one fixed
    shape (the last one padded with the same zeros the whole-clip call pads with), each with the input
    context its outputs need, and keeps channel 0 after resampling every channel together (as
    `to_codec_input` does). A clip that ends before the first call is full is resampled by
    `to_codec_input` itself, so short clips are exact by construction; `exact_in_pieces` checks the
    long-clip case on this machine. Memory: about three calls' worth, whatever the clip's length.
    """

    def __init__(
        self,
        sample_rate: int,
        target_rate: int = SAMPLE_RATE,
        channels: int = 1,
        *,
        call_frames: int | None = None,
    ) -> None:
        if sample_rate <= 0 or target_rate <= 0 or channels <= 0:
            raise ValueError(f"bad stream shape: {sample_rate} -> {target_rate} Hz, {channels} channels")
        self.sample_rate, self.target_rate, self.channels = int(sample_rate), int(target_rate), int(channels)
        self.frames_in = 0  # frames pushed so far
        self.samples_out = 0  # samples returned so far
        self.calls = 0  # convolution calls made so far
        self._passthrough = self.sample_rate == self.target_rate
        if self._passthrough:
            return
        self._orig, self._new = _reduced(self.sample_rate, self.target_rate)
        self._kernel, self._width = _kernel(self._orig, self._new, torch.float32)
        if call_frames is None:
            call_frames = max(STREAM_MIN_CALL_FRAMES, STREAM_CALL_BYTES // (4 * self.channels))
        call_frames = max(int(call_frames), _SMALLEST_CALL_FRAMES)
        self._outputs = math.ceil(call_frames / self._orig)  # conv outputs (of `new` phases) per call
        self._window = self._outputs * self._orig + 2 * self._width  # input frames one call reads
        # The zero-padded input not yet consumed, channel-major; starts with the left padding.
        self._pending: list[np.ndarray] = [np.zeros((self.channels, self._width), dtype=np.float32)]
        self._pending_frames = self._width

    def push(self, frames: np.ndarray) -> np.ndarray:
        """Add decoded frames [n, channels] (or [n] when mono); return the samples now final."""
        data = np.asarray(frames, dtype=np.float32)
        if data.ndim == 1:
            data = data[:, None]
        if data.ndim != 2 or data.shape[1] != self.channels:
            raise ValueError(f"frames must be [n, {self.channels}], got shape {data.shape}")
        self.frames_in += data.shape[0]
        if self._passthrough:
            return self._emit(data[:, 0].copy())
        if data.shape[0]:
            self._pending.append(np.ascontiguousarray(data.T))
            self._pending_frames += data.shape[0]
        if self._pending_frames < self._window:
            return np.zeros(0, dtype=np.float32)
        return self._emit(self._run_calls(final=False))

    def finish(self) -> np.ndarray:
        """The remaining samples: `ceil(frames_in * target / sample_rate)` in all, as the whole call."""
        if self._passthrough:
            return np.zeros(0, dtype=np.float32)
        total = math.ceil(self._new * self.frames_in / self._orig)
        if self.calls == 0:  # never reached one call: resample the clip whole, as to_codec_input does
            wave = self._take_pending()[:, self._width :]
            out = resample(torch.from_numpy(np.ascontiguousarray(wave)), self.sample_rate, self.target_rate)
            return self._emit(out[0].numpy().copy())
        return self._emit(self._run_calls(final=True)[: total - self.samples_out])

    def _run_calls(self, *, final: bool) -> np.ndarray:
        wave = self._take_pending()
        pieces = []
        if final:  # the whole call's right padding is zeros: pad with zeros up to the last call
            total = math.ceil(self._new * self.frames_in / self._orig)
            calls_left = math.ceil(
                (math.ceil(total / self._new) - self.samples_out // self._new) / self._outputs
            )
            need = (calls_left - 1) * self._outputs * self._orig + self._window if calls_left > 0 else 0
            if wave.shape[1] < need:
                wave = np.pad(wave, ((0, 0), (0, need - wave.shape[1])))
        start = 0
        while wave.shape[1] - start >= self._window:
            chunk = torch.from_numpy(wave[:, start : start + self._window])
            out = F.conv1d(chunk[:, None], self._kernel, stride=self._orig)  # [C, new, outputs]
            pieces.append(out.transpose(1, 2).reshape(self.channels, -1)[0].numpy().copy())
            start += self._outputs * self._orig
            self.calls += 1
        if not final:
            self._pending = [wave[:, start:]]
            self._pending_frames = wave.shape[1] - start
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def _take_pending(self) -> np.ndarray:
        wave = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending, axis=1)
        self._pending, self._pending_frames = [], 0
        return wave

    def _emit(self, samples: np.ndarray) -> np.ndarray:
        self.samples_out += samples.shape[0]
        return samples


@functools.lru_cache(maxsize=64)
def exact_in_pieces(sample_rate: int, target_rate: int = SAMPLE_RATE, channels: int = 1) -> bool:
    """Whether `CodecInputStream` gives `to_codec_input`'s samples bit for bit on this machine (torch
    build, CPU), for this rate pair and channel count: a probe of a few calls, uneven pushes."""
    stream = CodecInputStream(sample_rate, target_rate, channels)
    if stream._passthrough:
        return True
    frames = stream._window + 7919  # one full call, then the zero-padded last one
    rng = np.random.default_rng(sample_rate * 31 + channels)
    probe = rng.standard_normal((frames, channels), dtype=np.float32) * np.float32(0.3)
    want = to_codec_input(probe, sample_rate, target_rate)
    step = stream._window // 3 + 101
    got = [stream.push(probe[i : i + step]) for i in range(0, frames, step)]
    got.append(stream.finish())
    return bool(np.array_equal(np.concatenate(got), want))
