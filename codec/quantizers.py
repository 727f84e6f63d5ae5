"""Nearest-neighbour quantisers of SemantiCodec: the semantic k-means table and the acoustic VQ.

Both pick the nearest row by squared Euclidean distance expanded as |x|² + |c|² − 2·x·c in float32,
the same expansion (and operand order) the official code uses, so near-ties resolve the same way.
Rows are processed in chunks so a large batch never materialises a [rows, 32768] distance matrix.
"""

from __future__ import annotations

import torch
from torch import nn

ROWS_PER_CHUNK = 4096


def _chunks(flat: torch.Tensor):
    for start in range(0, flat.shape[0], ROWS_PER_CHUNK):
        yield flat[start : start + ROWS_PER_CHUNK]


class KMeansQuantizer(nn.Module):
    """Semantic tokens: index of the nearest k-means centroid (a plain table, not in any state dict)."""

    centroids: torch.Tensor  # registered buffer (follows .to(device))

    def __init__(self, centroids: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("centroids", centroids.float().contiguous(), persistent=False)

    @property
    def vocab_size(self) -> int:
        return int(self.centroids.shape[0])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., D] → ids [...]."""
        flat = features.reshape(-1, features.shape[-1]).float()
        table = self.centroids
        table_norm = table.pow(2).sum(dim=1, keepdim=True).t()
        ids = [
            torch.min(
                rows.pow(2).sum(dim=1, keepdim=True) + table_norm - 2 * torch.mm(rows, table.t()), dim=1
            ).indices
            for rows in _chunks(flat)
        ]
        return torch.cat(ids).reshape(features.shape[:-1])

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.centroids)


class _Codebook(nn.Module):
    """Holds `embed` [1, codes, D] under the official key `quantizer._codebook.embed`."""

    embed: torch.Tensor  # registered buffer

    def __init__(self, codes: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("embed", torch.zeros(1, codes, dim))


class VectorQuantizer(nn.Module):
    """Acoustic tokens: nearest code of an EMA-trained VQ codebook (inference only)."""

    def __init__(self, codes: int, dim: int) -> None:
        super().__init__()
        self._codebook = _Codebook(codes, dim)

    @property
    def codes(self) -> torch.Tensor:
        return self._codebook.embed[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., D] → ids [...]; always in float32, as the official VQ is."""
        flat = features.reshape(-1, features.shape[-1]).float()
        codes = self.codes.float()
        codes_norm = codes.pow(2).sum(dim=1)[None, :]
        ids = []
        for rows in _chunks(flat):
            squared = rows.pow(2).sum(dim=1, keepdim=True) + codes_norm + torch.mm(rows, codes.t()) * -2
            ids.append((-squared.clamp(min=0).sqrt()).argmax(dim=1))
        return torch.cat(ids).reshape(features.shape[:-1])

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.codes)
