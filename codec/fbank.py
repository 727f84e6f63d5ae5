"""Kaldi-compatible log-mel filterbank, batched and on any device.

Computes what `torchaudio.compliance.kaldi.fbank` gives with SemantiCodec's arguments (spec §2.6):
25 ms Hann ("hanning", symmetric) frames every 10 ms, per-frame DC removal, pre-emphasis 0.97, FFT 512,
power spectrum, 128 unnormalised triangular filters on the Kaldi mel scale between 20 Hz and Nyquist,
natural log floored at float32 epsilon. No dither, no energy, waveform not scaled by 32768.
Written as tensor ops over a batch so the front end runs where the model runs.
"""

from __future__ import annotations

import functools
import math
from typing import overload

import torch

from .config import HOP_SAMPLES, MEL_BINS, SAMPLE_RATE, WIN_SAMPLES

FFT_SIZE = 512
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
# Normalisation constants of the official feature extractor (AudioMAE's AudioSet statistics).
NORM_MEAN = -4.2677393
NORM_STD = 4.5689974


@overload
def _mel(freq: torch.Tensor) -> torch.Tensor: ...
@overload
def _mel(freq: float) -> float: ...
def _mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    if isinstance(freq, torch.Tensor):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=8)
def _mel_banks_cpu(num_bins: int, fft_size: int, sample_rate: int, low_freq: float) -> torch.Tensor:
    """Triangular filters [num_bins, fft_size // 2 + 1] built the Kaldi way, in float32."""
    num_fft_bins = fft_size // 2
    high_freq = 0.5 * sample_rate
    fft_bin_width = sample_rate / fft_size
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins).unsqueeze(1)
    left = mel_low + index * delta
    center = mel_low + (index + 1.0) * delta
    right = mel_low + (index + 2.0) * delta
    mel = _mel(fft_bin_width * torch.arange(num_fft_bins)).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.max(torch.zeros(1), torch.min(up, down))
    # Kaldi has no filter weight on the Nyquist bin.
    return torch.nn.functional.pad(banks, (0, 1))


def mel_banks(device: torch.device | str = "cpu") -> torch.Tensor:
    return _mel_banks_cpu(MEL_BINS, FFT_SIZE, SAMPLE_RATE, LOW_FREQ).to(device)


def kaldi_fbank(waveforms: torch.Tensor) -> torch.Tensor:
    """Log-mel fbank of float32 waveforms [B, N] → [B, frames, 128], frames = 1 + (N - 400) // 160."""
    if waveforms.dim() != 2:
        raise ValueError(f"expected [batch, samples], got {tuple(waveforms.shape)}")
    waveforms = waveforms.float()
    frames = waveforms.unfold(-1, WIN_SAMPLES, HOP_SAMPLES)  # [B, F, 400]
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = frames - PREEMPHASIS * previous
    window = torch.hann_window(WIN_SAMPLES, periodic=False, device=frames.device, dtype=frames.dtype)
    frames = torch.nn.functional.pad(frames * window, (0, FFT_SIZE - WIN_SAMPLES))
    power = torch.fft.rfft(frames).abs().pow(2.0)  # [B, F, 257]
    energies = torch.matmul(power, mel_banks(frames.device).T)
    eps = torch.tensor(torch.finfo(torch.float32).eps, device=frames.device)
    return torch.max(energies, eps).log()


def normalize_fbank(fbank: torch.Tensor) -> torch.Tensor:
    """The official normalisation: (fbank − mean) / (2·std)."""
    return (fbank - NORM_MEAN) / (NORM_STD * 2)
