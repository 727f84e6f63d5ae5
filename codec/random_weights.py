"""Seeded random weights (`weights="random:SEED"`), for tests, benchmarks and demos only.

Tokens from random weights mean nothing; callers record the source so it is never mistaken for
the real model. The scales follow the rules that kept the golden reference's tokens diverse
(shared/golden/README.md): plain fan-in scales, damped attention output projections, BiLSTM weights
at twice PyTorch's default bound, and codebook scales matched to the feature magnitudes.
"""

from __future__ import annotations

import math

import torch

from .config import FREQ_PATCHES, TIME_PATCHES, SemantiCodecConfig

ATTN_PROJ_GAIN = 0.2
LSTM_GAIN = 2.0
VQ_CODE_STD = 0.05
KMEANS_STD = 0.5


def sincos_position_table(dim: int) -> torch.Tensor:
    """A 2-D sin-cos table [1, 1 + 64·8, dim] with a zero row for the class token."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    positions = torch.arange(TIME_PATCHES * FREQ_PATCHES, dtype=torch.float64)
    parts = []
    for axis in (positions % TIME_PATCHES, positions // TIME_PATCHES):
        angles = axis[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, dim=1)
    table = torch.nn.functional.pad(table, (0, dim - table.shape[1]))
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()[None]


def _fill(
    name: str, shape: tuple[int, ...], generator: torch.Generator, config: SemantiCodecConfig
) -> torch.Tensor:
    if name.endswith("pos_embed"):
        return sincos_position_table(config.mae_dim)
    if name.startswith("encoder.") and ("weight" in name or "bias" in name):  # BiLSTM
        bound = LSTM_GAIN / math.sqrt(config.lstm_hidden)
        return (torch.rand(shape, generator=generator) * 2 - 1) * bound
    if name == "quantizer._codebook.embed":
        return torch.randn(shape, generator=generator) * VQ_CODE_STD
    if name.endswith(".bias") or name.endswith("cls_token"):
        return torch.randn(shape, generator=generator) * 0.02
    if len(shape) == 1:  # LayerNorm scales
        return 1 + torch.randn(shape, generator=generator) * 0.02
    fan_in = math.prod(shape[1:])
    gain = ATTN_PROJ_GAIN if name.endswith("attn.proj.weight") else 1.0
    return torch.randn(shape, generator=generator) * (gain / math.sqrt(fan_in))


def random_state_dict(
    template: dict[str, torch.Tensor], seed: int, config: SemantiCodecConfig
) -> dict[str, torch.Tensor]:
    """Values for every key of `template` (shapes only are read), reproducible from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return {name: _fill(name, tuple(t.shape), generator, config) for name, t in template.items()}


def random_centroids(seed: int, config: SemantiCodecConfig) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 1_000_003)
    shape = (config.semantic_vocab_size, config.feature_dim)
    return torch.randn(shape, generator=generator) * KMEANS_STD


# -- decoder ---------------------------------------------------------------------------------------
DECODER_SEED_OFFSET = 2_000_003
SCALE_FACTOR = 0.8  # the golden reference's value; the real one lives in decoder.ckpt
LINEAR_START, LINEAR_END, NUM_TIMESTEPS = 0.0015, 0.0195, 1000


def diffusion_schedule() -> dict[str, torch.Tensor]:
    """The LDM "linear" schedule buffers (float64 maths, stored float32), textbook DDPM definitions."""
    betas = torch.linspace(LINEAR_START**0.5, LINEAR_END**0.5, NUM_TIMESTEPS, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    values = {
        "logvar": torch.zeros(NUM_TIMESTEPS, dtype=torch.float64),
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
    }
    return {name: value.float() for name, value in values.items()}


def random_decoder_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Values for decoder keys (shapes only are read): the golden generator's rules.

    Fan-in normal weights (ConvTranspose included, fan-in = all but the first dimension), biases
    N(0, 0.02), norm scales 1 + N(0, 0.02), schedule buffers from their formula, scale_factor 0.8,
    EMA bookkeeping scalars fixed. Zero-initialised official layers get fan-in values too, so every
    layer does something.
    """
    generator = torch.Generator().manual_seed(seed + DECODER_SEED_OFFSET)
    schedule = diffusion_schedule()
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if name in schedule:
            out[name] = schedule[name]
        elif name == "scale_factor":
            out[name] = torch.tensor(SCALE_FACTOR)
        elif name == "model_ema.decay":
            out[name] = torch.tensor(0.9999)
        elif name == "model_ema.num_updates":
            out[name] = torch.tensor(0, dtype=torch.int32)
        elif name.endswith("bias"):  # also the dot-less EMA names (…0bias)
            out[name] = torch.randn(shape, generator=generator) * 0.02
        elif len(shape) == 1:
            out[name] = 1 + torch.randn(shape, generator=generator) * 0.02
        else:
            out[name] = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
    return out
