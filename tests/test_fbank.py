"""The Kaldi fbank front end against the official reference and against torchaudio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec.fbank import kaldi_fbank, normalize_fbank
from tests.references import torchaudio_reference

OFFICIAL_ARGS = dict(
    htk_compat=True,
    sample_frequency=16000,
    use_energy=False,
    window_type="hanning",
    num_mel_bins=128,
    dither=0.0,
    frame_shift=10,
)


@pytest.mark.parametrize("length", [400, 401, 16000, 163840 + 240, 50_000])
def test_matches_torchaudio_kaldi_fbank(length: int) -> None:
    torchaudio = torchaudio_reference()
    generator = torch.Generator().manual_seed(length)
    wave = torch.randn(1, length, generator=generator) * 0.1
    wave[:, length // 2 :] += torch.sin(torch.arange(length - length // 2) * 0.05)
    expected = torchaudio.compliance.kaldi.fbank(wave, **OFFICIAL_ARGS)
    ours = kaldi_fbank(wave)[0]
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_batched_equals_single() -> None:
    generator = torch.Generator().manual_seed(0)
    waves = torch.randn(3, 8000, generator=generator)
    batched = kaldi_fbank(waves)
    for i in range(3):
        torch.testing.assert_close(batched[i], kaldi_fbank(waves[i : i + 1])[0], rtol=1e-5, atol=1e-5)


def test_silence_hits_log_floor_and_normalisation_constants() -> None:
    silent = normalize_fbank(kaldi_fbank(torch.zeros(1, 4000)))
    assert torch.allclose(silent, torch.full_like(silent, -1.2776), atol=1e-4)
    assert torch.allclose(normalize_fbank(torch.zeros(1)), torch.tensor([0.4670]), atol=1e-4)


def test_golden_fbank_of_padded_input(golden_dir, golden_input) -> None:
    from codec import SemantiCodec

    codec = SemantiCodec(50, 16384, weights="random:0", size="tiny")
    segments = codec.split_segments(golden_input)
    features = codec.segment_features(segments.samples, segments.valid_frames)[0]
    expected = np.load(golden_dir / "fbank.npy")
    np.testing.assert_allclose(features.numpy(), expected, rtol=1e-4, atol=1e-4)
