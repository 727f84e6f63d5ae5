"""Writes a checkpoint folder in the official layout from seeded random weights (any size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from codec import SemantiCodec
from codec.semanticodec import _encoder_ignored_keys


def write_checkpoint_folder(
    folder: Path, *, token_rate: int = 50, vocab: int = 4096, size: str = "tiny", seed: int = 3
) -> SemantiCodec:
    """Save `random:seed` weights as encoder.ckpt + codebook_idx/…; return the codec they came from."""
    codec = SemantiCodec(token_rate, vocab, weights=f"random:{seed}", size=size, device="cpu")
    state = dict(codec.encoder.state_dict())
    generator = torch.Generator().manual_seed(seed)
    for name, shape in _encoder_ignored_keys(codec.config).items():
        state[name] = torch.randn(shape, generator=generator)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "encoder.ckpt")
    table = folder / codec.config.codebook_relpath
    table.parent.mkdir(parents=True, exist_ok=True)
    np.save(table, codec.encoder.semantic_quantizer.centroids.numpy())
    return codec
