"""SemantiCodec decoder on the tiny architecture: batching, noise modes, long audio, loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from codec import CheckpointError, SemantiCodec, num_tokens
from codec.decoder import (
    WINDOW_SAMPLES,
    decoded_length,
    overlap_add,
    split_windows,
    unused_decoder_keys,
)
from codec.sampler import LATENT_SHAPE, NoiseSource, ddim_timesteps
from tests.helpers import record_checkpoint_reads
from tests.tiny_checkpoint import write_checkpoint_folder

BOTH = ("encoder", "decoder")


@pytest.fixture(scope="module")
def tiny() -> SemantiCodec:
    return SemantiCodec(50, 4096, weights="random:0", size="tiny", device="cpu", components=BOTH)


def _tokens(count: int, seed: int, vocab: int = 4096) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack(
        [
            torch.randint(0, vocab, (count,), generator=generator),
            torch.randint(0, 8192, (count,), generator=generator),
        ],
        dim=-1,
    )


def _noise(windows: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(windows, *LATENT_SHAPE, generator=generator),
        torch.randn(windows, steps, *LATENT_SHAPE, generator=generator),
    )


def _official_overlap_add(windows: list[np.ndarray], overlap: int) -> np.ndarray:
    """The official numpy procedure, step by step (in-place float32 arrays, float64 fades)."""
    output = np.array([], dtype=np.float32).reshape(1, 1, -1)
    for i, window in enumerate(windows):
        window = window.copy().reshape(1, 1, -1)
        if i > 0:
            window[:, :, :overlap] *= np.linspace(0, 1, overlap).reshape(1, 1, -1)
        if output.size > 0:
            output[:, :, -overlap:] *= np.linspace(1, 0, overlap).reshape(1, 1, -1)
            output[:, :, -overlap:] += window[:, :, :overlap]
        output = window if output.size == 0 else np.concatenate((output, window[:, :, overlap:]), axis=2)
    return output[0, 0]


# -- pure functions ---------------------------------------------------------------------------------
def test_overlap_add_equals_official_procedure_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    windows = [rng.standard_normal(WINDOW_SAMPLES).astype(np.float32) * 0.3 for _ in range(4)]
    ours = overlap_add([torch.from_numpy(w) for w in windows])
    reference = _official_overlap_add(windows, 10240)
    assert ours.dtype == torch.float32 and ours.shape == (4 * WINDOW_SAMPLES - 3 * 10240,)
    np.testing.assert_array_equal(ours.numpy(), reference)


def test_crossfade_seams_are_linear_and_at_the_official_positions() -> None:
    ones = [torch.ones(1000), 2 * torch.ones(1000), 3 * torch.ones(1000)]
    out = overlap_add(ones, overlap=100)
    assert out.shape == (3000 - 2 * 100,)
    assert (out[:900] == 1).all() and (out[1000:1800] == 2).all() and (out[1900:] == 3).all()
    ramp = torch.from_numpy(np.linspace(0, 1, 100)).float()
    torch.testing.assert_close(out[900:1000], 1 + ramp, rtol=0, atol=1e-6)  # 1·(1−r) + 2·r
    torch.testing.assert_close(out[1800:1900], 2 + ramp, rtol=0, atol=1e-6)
    assert overlap_add([torch.arange(5.0)]).tolist() == [0, 1, 2, 3, 4]
    assert overlap_add([]).numel() == 0


@pytest.mark.parametrize(
    ("count", "starts"),
    [
        (1, [0]),
        (256, [0]),
        (257, [0, 240]),
        (496, [0, 240]),
        (497, [0, 240, 480]),
        (0, []),
    ],
)
def test_windows_follow_official_split(count: int, starts: list[int]) -> None:
    tokens = torch.arange(count)[:, None].expand(count, 2)
    windows = split_windows(tokens, 256)
    assert [int(w[0, 0]) for w in windows] == starts
    assert all(1 <= len(w) <= 256 for w in windows)
    if windows:
        assert int(windows[-1][-1, 0]) == count - 1


def test_ddim_timesteps_for_other_step_counts() -> None:
    assert ddim_timesteps(50).tolist() == list(range(1, 1000, 20))
    assert ddim_timesteps(10).tolist() == list(range(1, 1000, 100))
    assert ddim_timesteps(1).tolist() == [1]
    assert len(ddim_timesteps(7)) == 8  # the official rule: range(0, 1000, 1000 // 7) + 1
    with pytest.raises(ValueError, match="timestep 1000"):
        ddim_timesteps(3)


# -- batching -----------------------------------------------------------------------------------------
def test_batched_cfg_equals_two_unet_calls(tiny: SemantiCodec) -> None:
    windows = [_tokens(256, 1), _tokens(100, 2)]
    noise = _noise(2, 2, seed=5)
    outs = [
        tiny.decoder.decode_windows(windows, NoiseSource(explicit=noise), steps=2, batched_cfg=b)
        for b in (True, False)
    ]
    assert outs[0].shape == (2, WINDOW_SAMPLES)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)


def test_batch_of_clips_equals_single_decodes(tiny: SemantiCodec) -> None:
    clips = [_tokens(n, seed=n) for n in (3, 256, 300, 40)]
    lengths = torch.tensor([len(c) for c in clips])
    padded = torch.full((len(clips), int(lengths.max()), 2), -1, dtype=torch.int64)
    for i, clip in enumerate(clips):
        padded[i, : len(clip)] = clip
    windows_per_clip = [len(split_windows(c, 256)) for c in clips]
    x_t, steps = _noise(sum(windows_per_clip), 2, seed=9)
    wave, wave_lengths = tiny.decode_batch(padded, lengths, steps=2, noise=(x_t, steps), max_batch_windows=3)
    first = 0
    for i, clip in enumerate(clips):
        used = slice(first, first + windows_per_clip[i])
        first += windows_per_clip[i]
        single, single_length = tiny.decode_batch(clip[None], steps=2, noise=(x_t[used], steps[used]))
        assert int(wave_lengths[i]) == int(single_length[0]) == decoded_length(len(clip), 50)
        torch.testing.assert_close(wave[i, : int(wave_lengths[i])], single[0], rtol=1e-4, atol=1e-5)
        assert (wave[i, int(wave_lengths[i]) :] == 0).all()
    # seeded: each clip its own generator, so batching does not change a clip's noise
    seeded, _ = tiny.decode_batch(padded, lengths, steps=2, seed=7)
    alone, alone_length = tiny.decode_batch(clips[2][None], steps=2, seed=7)
    torch.testing.assert_close(seeded[2, : int(alone_length[0])], alone[0], rtol=1e-4, atol=1e-5)


def test_decode_is_official_style_and_seeded_through_the_global_rng(tiny: SemantiCodec) -> None:
    tokens = _tokens(30, seed=3)[None]
    a = tiny.decode(tokens, seed=11, steps=2)
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    assert a.shape == (1, 1, decoded_length(30, 50)) == (1, 1, int(30 * 0.02 * 2 * 16000))
    np.testing.assert_array_equal(a, tiny.decode(tokens, seed=11, steps=2))
    # seed=None draws from the global generator exactly like a private generator with that seed
    private, _ = tiny.decode_batch(tokens, steps=2, seed=11)
    torch.manual_seed(11)
    global_rng, _ = tiny.decode_batch(tokens, steps=2)
    torch.testing.assert_close(private, global_rng, rtol=0, atol=0)
    np.testing.assert_array_equal(a[0], private.numpy())
    assert not np.array_equal(a, tiny.decode(tokens, seed=12, steps=2))


def test_guidance_and_bad_inputs(tiny: SemantiCodec) -> None:
    tokens = _tokens(20, seed=4)[None]
    noise = _noise(1, 2, seed=1)
    plain, _ = tiny.decode_batch(tokens, steps=2, noise=noise, guidance=1.0)
    guided, _ = tiny.decode_batch(tokens, steps=2, noise=noise, guidance=2.0)
    assert not torch.equal(plain, guided)
    with pytest.raises(ValueError, match="out of range"):
        tiny.decode_batch(torch.full((1, 5, 2), -1), steps=1, seed=0)
    with pytest.raises(ValueError, match="windows"):
        tiny.decode_batch(tokens, steps=2, noise=_noise(2, 2, seed=1))
    empty, empty_length = tiny.decode_batch(torch.zeros(1, 0, 2, dtype=torch.int64), steps=1, seed=0)
    assert int(empty_length[0]) == 0 and empty.shape == (1, 0)


# -- long audio ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("token_rate", [50, 25, 100])
def test_decoded_length_formula(token_rate: int) -> None:
    stack = 100 / token_rate
    for count in (1, 7, 252, 260, 1003, 4504):
        official = int(((count / 8) * 16 * 0.01 * stack) * 16000)
        assert decoded_length(count, token_rate) == official
        assert abs(official - count * 0.02 * stack * 16000) <= 1


def test_long_audio_lengths_match_official_formula(tiny: SemantiCodec) -> None:
    """0.05 s, 10.24 s, 20.48 s and 3 minutes of tokens, decoded as one batch (1 DDIM step)."""
    seconds = [0.05, 10.24, 20.48, 180.0]
    counts = [num_tokens(int(round(s * 16000)), 50) for s in seconds]
    assert counts[:3] == [4, 260, 516]
    padded = torch.full((len(counts), max(counts), 2), -1, dtype=torch.int64)
    for i, count in enumerate(counts):
        padded[i, :count] = _tokens(count, seed=i)
    wave, lengths = tiny.decode_batch(padded, torch.tensor(counts), steps=1, seed=0, max_batch_windows=16)
    for i, count in enumerate(counts):
        windows = len(split_windows(padded[i, :count], 256))
        produced = WINDOW_SAMPLES + (windows - 1) * (WINDOW_SAMPLES - 10240)
        assert int(lengths[i]) == decoded_length(count, 50) == int(count * 0.02 * 2 * 16000)
        assert int(lengths[i]) <= produced
        assert torch.isfinite(wave[i]).all() and wave[i, : int(lengths[i])].abs().max() > 0
    assert wave.shape == (4, int(lengths.max()))


# -- loading ------------------------------------------------------------------------------------------
def _write_decoder(folder: Path, source: SemantiCodec) -> None:
    state = dict(source.decoder.state_dict())
    generator = torch.Generator().manual_seed(0)
    for name, shape in unused_decoder_keys(source.decoder).items():
        state[name] = torch.randn(shape, generator=generator)
    torch.save(state, folder / "decoder.ckpt")


@pytest.fixture()
def tiny_folder(tmp_path: Path) -> tuple[Path, SemantiCodec]:
    write_checkpoint_folder(tmp_path, token_rate=50, vocab=4096, seed=3)
    source = SemantiCodec(50, 4096, weights="random:3", size="tiny", device="cpu", components=BOTH)
    _write_decoder(tmp_path, source)
    return tmp_path, source


def test_folder_decoder_loads_strictly_and_matches_source(tiny_folder) -> None:
    folder, source = tiny_folder
    loaded = SemantiCodec(50, 4096, weights=str(folder), size="tiny", device="cpu", components=BOTH)
    tokens = _tokens(50, seed=8)[None]
    noise = _noise(1, 2, seed=2)
    torch.testing.assert_close(
        loaded.decode_batch(tokens, steps=2, noise=noise)[0],
        source.decode_batch(tokens, steps=2, noise=noise)[0],
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        (lambda s: s.pop("model.diffusion_model.out.2.bias"), "model.diffusion_model.out.2.bias"),
        (
            lambda s: s.__setitem__("first_stage_model.vocoder.extra", torch.zeros(2)),
            "first_stage_model.vocoder.extra",
        ),
        (lambda s: s.__setitem__("scale_factor", torch.ones(3)), "scale_factor"),
        (
            lambda s: s.pop("first_stage_model.encoder.conv_in.weight"),
            "first_stage_model.encoder.conv_in.weight",
        ),
        (lambda s: s.pop("model_ema.decay"), "model_ema.decay"),
        (lambda s: s.__setitem__("posterior_variance", torch.zeros(999)), "posterior_variance"),
    ],
)
def test_tampered_decoder_checkpoint_is_rejected_naming_the_key(tiny_folder, tamper, named) -> None:
    folder, _ = tiny_folder
    state = torch.load(folder / "decoder.ckpt", weights_only=True)
    tamper(state)
    torch.save(state, folder / "decoder.ckpt")
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        SemantiCodec(50, 4096, weights=str(folder), size="tiny", device="cpu", components=BOTH)


def test_encode_only_replica_never_opens_decoder_ckpt(tiny_folder, monkeypatch) -> None:
    folder, _ = tiny_folder
    (folder / "decoder.ckpt").write_bytes(b"not a checkpoint")  # would fail if anything read it
    opened = record_checkpoint_reads(monkeypatch)
    codec = SemantiCodec(50, 4096, weights=str(folder), size="tiny", device="cpu")
    assert codec.decoder is None and opened == ["encoder.ckpt"]
    assert codec.encode(torch.zeros(8000)).shape[1] == num_tokens(8000, 50)
    with pytest.raises(RuntimeError, match="without the decoder"):
        codec.decode_batch(_tokens(4, seed=0)[None])
    (folder / "decoder.ckpt").unlink()
    SemantiCodec(50, 4096, weights=str(folder), size="tiny", device="cpu")  # absent: still fine
    with pytest.raises(FileNotFoundError, match="no decoder file"):
        SemantiCodec(50, 4096, weights=str(folder), size="tiny", device="cpu", components=BOTH)


def test_components_option_is_validated() -> None:
    with pytest.raises(ValueError, match="components"):
        SemantiCodec(50, 4096, weights="random:0", size="tiny", device="cpu", components=("vocoder",))
