"""A real consumer of the loader: a tiny causal transformer trains on packed batches of the tiny
codec's tokens and its loss drops.

The model attends block-diagonally (one block per packed segment, `block_causal_mask`), takes
positions from `position_ids` and learns from `labels` (-100 on padding and segment starts), so
the test fails if packing, collate or the flat vocabulary hand the model something inconsistent
(ids past the vocabulary crash the embedding; misaligned labels stop the loss from falling)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.training.loader import build_loader
from pipeline.training.packing import IGNORE_INDEX, block_causal_mask
from pipeline.training.token_layout import TokenLayout

SEQ_LEN = 128
STEPS = 30


class Block(nn.Module):
    """Pre-norm attention + MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, dim))
        return x + self.mlp(self.norm2(x))


class TinyCausalLM(nn.Module):
    """Two blocks of width 16: ~6.5k parameters besides the embedding of the flat vocabulary
    (24580 × 16 for the tiny codec, tied with the output head)."""

    def __init__(self, vocab: int, *, dim: int = 16, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(SEQ_LEN, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.embed.weight, std=0.02)  # small logits at the start: loss ≈ log(vocab)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.embed(batch["input_ids"]) + self.positions(batch["position_ids"])
        mask = block_causal_mask(batch["document_ids"])
        for block in self.blocks:
            x = block(x, mask)
        logits = self.norm(x) @ self.embed.weight.T
        # position t predicts the label at t + 1 (labels are -100 where nothing earlier predicts it)
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            batch["labels"][:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX,
        )


def test_tiny_transformer_loss_drops_on_packed_batches(tokenized_output):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is faster than two fighting
    try:
        losses, vocab = train(tokenized_output.root)
    finally:
        torch.set_num_threads(threads)
    initial = sum(losses[:3]) / 3
    final = sum(losses[-5:]) / 5
    assert abs(initial - math.log(vocab)) < 0.5, "starts near chance"
    assert final < initial - 2.0, f"loss fell only from {initial:.2f} to {final:.2f}"


def train(root: str) -> tuple[list[float], int]:
    """STEPS AdamW steps on packed batches, epoch after epoch; the losses and the vocabulary size."""
    torch.manual_seed(0)
    layout = TokenLayout.for_output(root)
    loader = build_loader(root, layout=layout, seq_len=SEQ_LEN, batch_size=2, seed=0, shuffle_buffer=4)
    model = TinyCausalLM(layout.vocab_size)
    body = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("embed"))
    assert body < 10_000
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses: list[float] = []
    epoch = 0
    while len(losses) < STEPS:
        loader.set_epoch(epoch)
        for batch in loader:
            assert int(batch["input_ids"].max()) < layout.vocab_size
            loss = model.loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == STEPS:
                break
        epoch += 1
    return losses, layout.vocab_size
