"""Band-limited resampling that matches the official reader (`torchaudio.functional.resample` defaults).

The official code resamples with a Hann-windowed sinc (6 zero crossings, roll-off 0.99) before
features; tokens of non-16 kHz files only match if we resample the same way. torchaudio itself does
not import beside CPU torch here, so this is our own implementation of that filter: a polyphase FIR
applied as a strided 1-D convolution, the kernel built in the waveform's dtype.
"""

from __future__ import annotations

import functools
import math

import torch
from torch.nn import functional as F

ZERO_CROSSINGS = 6
ROLLOFF = 0.99


@functools.lru_cache(maxsize=16)
def _kernel(orig: int, new: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """Filters [new, 1, taps] for output phases 0..new-1, and the one-sided width in input samples."""
    cutoff = min(orig, new) * ROLLOFF
    width = math.ceil(ZERO_CROSSINGS * orig / cutoff)
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
    gcd = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // gcd, int(new_rate) // gcd
    kernel, width = _kernel(orig, new, waveform.dtype)
    shape = waveform.shape
    flat = waveform.reshape(-1, shape[-1])
    length = flat.shape[-1]
    padded = F.pad(flat, (width, width + orig))
    out = F.conv1d(padded[:, None], kernel.to(waveform.device), stride=orig)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    out = out[..., : math.ceil(new * length / orig)]
    return out.reshape(*shape[:-1], out.shape[-1])
