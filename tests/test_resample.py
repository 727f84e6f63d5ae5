"""Our sinc resampler gives what the official reader's torchaudio.functional.resample gives."""

from __future__ import annotations

import math

import pytest
import torch

from codec.resample import resample
from tests.references import torchaudio_reference


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000])
def test_matches_torchaudio(rate: int) -> None:
    torchaudio = torchaudio_reference()
    wave = torch.randn(2, rate // 3 + 7, generator=torch.Generator().manual_seed(rate))
    expected = torchaudio.functional.resample(wave, rate, 16000)
    ours = resample(wave, rate, 16000)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_length_and_tone_preserved(rate: int) -> None:
    seconds = 0.5
    t = torch.arange(int(rate * seconds)) / rate
    tone = torch.sin(2 * math.pi * 440 * t)
    out = resample(tone, rate, 16000)
    assert out.shape[-1] == math.ceil(len(tone) * 16000 / rate)
    reference = torch.sin(2 * math.pi * 440 * torch.arange(out.shape[-1]) / 16000)
    middle = slice(400, -400)  # away from the zero-padded edges
    assert torch.max(torch.abs(out[middle] - reference[middle])) < 1e-2


def test_same_rate_is_identity() -> None:
    wave = torch.randn(100)
    assert resample(wave, 16000, 16000) is wave
