"""AudioMAE ViT encoder: the semantic feature extractor of SemantiCodec (spec §3).

Only the encoder half runs: patch embedding (16×16, stride 16 → 64 time × 8 frequency patches,
sequence index t·8 + f), the stored fixed position table, a class token, pre-norm transformer blocks,
and the feature = mean over the last three blocks of each output through the final LayerNorm.
Attribute names follow the official checkpoint (`patch_embed.proj`, `blocks.N.attn.qkv`, …) so its
state dict loads with no key remapping.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import FREQ_PATCHES, PATCH, TIME_PATCHES, SemantiCodecConfig

LAYER_NORM_EPS = 1e-6
AVERAGED_BLOCKS = 3  # the official rule "block index > 8" of 12 blocks


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=PATCH, stride=PATCH)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        # [B, 1, 1024, 128] → [B, 512, dim], time-major (t·8 + f)
        return self.proj(fbank).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AudioMAEEncoder(nn.Module):
    """Maps normalised fbank segments [B, 1024, 128] to patch features [B, 512, dim]."""

    def __init__(self, config: SemantiCodecConfig) -> None:
        super().__init__()
        dim = config.mae_dim
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # Fixed sin-cos table, stored in the checkpoint: loaded, never regenerated (spec §3).
        self.pos_embed = nn.Parameter(
            torch.zeros(1, TIME_PATCHES * FREQ_PATCHES + 1, dim), requires_grad=False
        )
        self.blocks = nn.ModuleList(
            Block(dim, config.mae_heads, config.mae_mlp_dim) for _ in range(config.mae_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(fbank.unsqueeze(1)) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        first_averaged = len(self.blocks) - AVERAGED_BLOCKS
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index >= first_averaged:
                outputs.append(self.norm(x))
        return torch.stack(outputs, dim=0).mean(dim=0)[:, 1:, :]


class AudioMAE(nn.Module):
    """Holds the encoder under `.model`, the official checkpoint's prefix (`audiomae.model.*`)."""

    def __init__(self, config: SemantiCodecConfig) -> None:
        super().__init__()
        self.model = AudioMAEEncoder(config)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.model(fbank)


def unused_decoder_shapes(config: SemantiCodecConfig) -> dict[str, tuple[int, ...]]:
    """Keys of the MAE decoder that official encoder checkpoints carry but inference never uses.

    The loader checks they are present with these shapes (a strict load), then drops them.
    """
    dim, ddim, mlp = config.mae_dim, config.mae_decoder_dim, 4 * config.mae_decoder_dim
    patches = TIME_PATCHES * FREQ_PATCHES + 1
    shapes: dict[str, tuple[int, ...]] = {
        "mask_token": (1, 1, ddim),
        "decoder_pos_embed": (1, patches, ddim),
        "decoder_embed.weight": (ddim, dim),
        "decoder_embed.bias": (ddim,),
    }
    for i in range(config.mae_decoder_depth):
        prefix = f"decoder_blocks.{i}."
        shapes.update(
            {
                prefix + "norm1.weight": (ddim,),
                prefix + "norm1.bias": (ddim,),
                prefix + "attn.qkv.weight": (3 * ddim, ddim),
                prefix + "attn.qkv.bias": (3 * ddim,),
                prefix + "attn.proj.weight": (ddim, ddim),
                prefix + "attn.proj.bias": (ddim,),
                prefix + "norm2.weight": (ddim,),
                prefix + "norm2.bias": (ddim,),
                prefix + "mlp.fc1.weight": (mlp, ddim),
                prefix + "mlp.fc1.bias": (mlp,),
                prefix + "mlp.fc2.weight": (ddim, mlp),
                prefix + "mlp.fc2.bias": (ddim,),
            }
        )
    shapes.update(
        {
            "decoder_norm.weight": (ddim,),
            "decoder_norm.bias": (ddim,),
            "decoder_pred.weight": (PATCH * PATCH, ddim),
            "decoder_pred.bias": (PATCH * PATCH,),
        }
    )
    return {f"audiomae.model.{name}": shape for name, shape in shapes.items()}
