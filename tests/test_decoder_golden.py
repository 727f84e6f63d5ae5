"""Decoder parity with the official code on the golden reference (tests/data/golden/).

Relative error = max |ours − reference| / max |reference|. Each stage is fed the reference input of
that stage, so a failure points at one network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from codec import SemantiCodec
from codec.sampler import NoiseSource
from tests.golden import assert_official, load_npy, official_decoded, official_noise


def rel_err(ours: torch.Tensor | np.ndarray, ref: np.ndarray) -> float:
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def codec(golden_weights: Path) -> SemantiCodec:
    return SemantiCodec(
        50, 16384, weights=str(golden_weights), device="cpu", components=("encoder", "decoder")
    )


@pytest.fixture(scope="module")
def contexts(codec: SemantiCodec, golden_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.from_numpy(load_npy(golden_dir, "tokens"))
    return codec.decoder.conditions.build([tokens[0]])


def test_condition_rebuilt_from_tokens_is_exact(contexts, golden_dir: Path) -> None:
    cond, uncond = contexts
    assert_official(golden_dir, "decoder_condition", cond[0])  # bit for bit, via its digest
    assert (uncond[0, :, :3072] == 0).all()
    np.testing.assert_array_equal(uncond[0, :, 3072:].numpy(), cond[0, :, 3072:].numpy())


def test_ddim_schedule_matches_official_constants(codec: SemantiCodec, golden_dir: Path) -> None:
    schedule = codec.decoder.schedule(50)
    steps = json.loads((golden_dir / "ddim_schedule.json").read_text())["steps"]
    assert list(schedule.timesteps) == [s["t"] for s in steps] == list(range(981, 0, -20))
    for i, step in enumerate(steps):  # bit-exact, float64 and float32
        assert schedule.a_prev64[i] == step["a_prev"] and schedule.sigma64[i] == step["sigma"]
        assert float(schedule.a_t[i]) == step["a_t_f32"]
        assert float(schedule.a_prev[i]) == step["a_prev_f32"]
        assert float(schedule.sigma[i]) == step["sigma_f32"]
        assert float(schedule.sqrt_alpha[i]) == step["sqrt_alphas_cumprod[t]"]
        assert float(schedule.sqrt_one_minus_alpha[i]) == step["sqrt_one_minus_alphas_cumprod[t]"]


def test_first_unet_calls_match(codec: SemantiCodec, contexts, golden_dir: Path) -> None:
    cond, uncond = contexts
    x = torch.from_numpy(load_npy(golden_dir, "x_T"))
    t = torch.from_numpy(load_npy(golden_dir, "unet_first_t"))
    assert int(t[0]) == 981
    with torch.inference_mode():
        # the batched path (uncond ‖ cond as one call) and the official two-call path
        both = codec.decoder.unet(torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, cond]))
        v_uncond = codec.decoder.unet(x, t, uncond)
        v_cond = codec.decoder.unet(x, t, cond)
    errors = {
        "uncond": rel_err(v_uncond[0], load_npy(golden_dir, "unet_first_out_uncond")),
        "cond": rel_err(v_cond[0], load_npy(golden_dir, "unet_first_out_cond")),
        "batched_uncond": rel_err(both[0], load_npy(golden_dir, "unet_first_out_uncond")),
        "batched_cond": rel_err(both[1], load_npy(golden_dir, "unet_first_out_cond")),
    }
    print("UNet relative errors:", errors)
    assert max(errors.values()) <= 1e-4, errors
    torch.testing.assert_close(both, torch.cat([v_uncond, v_cond]), rtol=1e-5, atol=1e-5)


def test_vae_decode_matches(codec: SemantiCodec, golden_dir: Path) -> None:
    latent = torch.from_numpy(load_npy(golden_dir, "final_latent"))
    with torch.inference_mode():
        mel = codec.decoder.latent_to_mel(latent)
    error = rel_err(mel[0, 0], load_npy(golden_dir, "vae_mel"))
    print("VAE relative error:", error)
    assert error <= 1e-4


def test_vocoder_matches(codec: SemantiCodec, golden_dir: Path) -> None:
    mel = torch.from_numpy(load_npy(golden_dir, "vae_mel"))[None, None]
    with torch.inference_mode():
        wave = codec.decoder.mel_to_wave(mel)
    assert wave.shape == (1, 160 * 1024 + 32)
    error = rel_err(wave[0], load_npy(golden_dir, "vocoder_wave_window0"))
    print("vocoder relative error:", error)
    assert error <= 1e-4


def test_official_seeding_reproduces_reference_noise(golden_dir: Path) -> None:
    x_t = load_npy(golden_dir, "x_T")
    torch.manual_seed(1234)  # the official way: global RNG, x_T then one draw per step
    drawn_x, drawn_steps = NoiseSource(generators=[None]).draw([0], 50)
    np.testing.assert_array_equal(drawn_x.numpy(), x_t)
    assert_official(golden_dir, "step_noise", drawn_steps[:, 0].contiguous())
    # our per-clip generator seeded with the same value gives the same stream
    own_x, own_steps = NoiseSource(generators=[torch.Generator().manual_seed(1234)]).draw([0], 50)
    np.testing.assert_array_equal(own_x.numpy(), x_t)
    assert_official(golden_dir, "step_noise", own_steps[:, 0].contiguous())


@pytest.mark.slow
def test_full_decode_with_reference_noise_matches(
    codec: SemantiCodec, golden_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 DDIM steps × one batched UNet call (~1 min on 2 CPU cores)."""
    tokens = torch.from_numpy(load_npy(golden_dir, "tokens"))
    x_t, step_noise = official_noise(golden_dir)  # redrawn from seed 1234, digest-checked
    noise = (x_t, step_noise[None])
    latents = []
    original = codec.decoder.latent_to_mel

    def recording(latent: torch.Tensor) -> torch.Tensor:
        latents.append(latent.clone())
        return original(latent)

    monkeypatch.setattr(codec.decoder, "latent_to_mel", recording)
    wave, lengths = codec.decode_batch(tokens, torch.tensor([252]), noise=noise)
    reference = official_decoded(golden_dir)
    assert int(lengths[0]) == reference.shape[-1] == 161280
    errors = {
        "final_latent": rel_err(latents[0], load_npy(golden_dir, "final_latent")),
        "decoded": rel_err(wave[0, : int(lengths[0])], reference[0, 0]),
    }
    print("full decode relative errors:", errors)
    assert errors["final_latent"] <= 1e-3 and errors["decoded"] <= 1e-3, errors


@pytest.mark.slow
def test_decode_with_official_seed_equals_official_decode(codec: SemantiCodec, golden_dir: Path) -> None:
    """`decode(tokens, seed=1234)` == official `torch.manual_seed(1234); decode(tokens)`."""
    tokens = torch.from_numpy(load_npy(golden_dir, "tokens"))
    wave = codec.decode(tokens, seed=1234)
    assert wave.dtype == np.float32 and wave.shape == (1, 1, 161280)
    error = rel_err(wave, official_decoded(golden_dir))
    print("decode(seed=1234) relative error:", error)
    assert error <= 1e-3
