"""Tokens → the decoder's cross-attention condition (spec §4), as the official `decode` rebuilds it.

Per window of n = 512/K token positions: [acoustic VQ code row (D) ‖ k-means centroid (D) ‖ 192-d
sinusoidal PE], rows past the window's tokens set to −1 in the 2D feature part. The
classifier-free-guidance "unconditional" input is the same tensor with the feature part zeroed and
the PE kept. No padding detection happens at decode time.
"""

from __future__ import annotations

import math

import torch

from .quantizers import KMeansQuantizer, VectorQuantizer

PE_DIM = 192
PE_TABLE_LENGTH = 512
PAD_VALUE = -1.0


def sinusoidal_positions(length: int, dim: int = PE_DIM) -> torch.Tensor:
    """[length, dim]: sin on even channels, cos on odd ones, base 10000 (official float32 order)."""
    position = torch.arange(PE_TABLE_LENGTH).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * -(math.log(10000.0) / dim))
    table = torch.zeros(PE_TABLE_LENGTH, dim)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table[:length]


class ConditionBuilder:
    """Reads the encoder's two quantisers (shared, never copied; read at call time so it follows the
    encoder across devices) and holds the PE table."""

    def __init__(self, acoustic: VectorQuantizer, semantic: KMeansQuantizer, window_tokens: int) -> None:
        self.acoustic = acoustic
        self.semantic = semantic
        self.window_tokens = window_tokens
        self.positions = sinusoidal_positions(window_tokens)

    @property
    def vq_codes(self) -> torch.Tensor:
        return self.acoustic.codes  # [8192, D]

    @property
    def centroids(self) -> torch.Tensor:
        return self.semantic.centroids  # [vocab, D]

    @property
    def feature_dim(self) -> int:
        return self.vq_codes.shape[1]

    @property
    def context_dim(self) -> int:
        return 2 * self.feature_dim + PE_DIM

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens int64 [m, 2] (semantic, acoustic), m ≤ n → [n, 2D] with −1 rows past m."""
        count = tokens.shape[0]
        if count > self.window_tokens:
            raise ValueError(f"a window holds at most {self.window_tokens} tokens, got {count}")
        semantic, acoustic = tokens[:, 0], tokens[:, 1]
        if count and (
            int(semantic.min()) < 0
            or int(acoustic.min()) < 0
            or int(semantic.max()) >= self.centroids.shape[0]
            or int(acoustic.max()) >= self.vq_codes.shape[0]
        ):
            raise ValueError("token ids out of range (is padding (−1) inside the token length?)")
        device = self.vq_codes.device
        out = torch.full((self.window_tokens, 2 * self.feature_dim), PAD_VALUE, device=device)
        out[:count] = torch.cat(
            [
                self.acoustic.lookup(acoustic.to(device)).float(),
                self.semantic.lookup(semantic.to(device)).float(),
            ],
            dim=-1,
        )
        return out

    def build(self, windows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows of tokens → (cond, uncond), each [W, n, 2D + 192] on the tables' device."""
        features = torch.stack([self.features(w) for w in windows])
        positions = self.positions.to(features.device).expand(features.shape[0], -1, -1)
        cond = torch.cat([features, positions], dim=-1)
        uncond = torch.cat([features * 0.0, positions], dim=-1)
        return cond, uncond
