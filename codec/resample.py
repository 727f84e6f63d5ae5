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
