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


def _fill(name: str, shape: tuple[int, ...], generator: torch.Generator,
          config: SemantiCodecConfig) -> torch.Tensor:
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


def random_state_dict(template: dict[str, torch.Tensor], seed: int,
                      config: SemantiCodecConfig) -> dict[str, torch.Tensor]:
    """Values for every key of `template` (shapes only are read), reproducible from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return {name: _fill(name, tuple(t.shape), generator, config) for name, t in template.items()}


def random_centroids(seed: int, config: SemantiCodecConfig) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 1_000_003)
    shape = (config.semantic_vocab_size, config.feature_dim)
    return torch.randn(shape, generator=generator) * KMEANS_STD
