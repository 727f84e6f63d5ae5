"""The decode path of AudioLDM's AutoencoderKL (SemantiCodec's first stage, spec §5): latent → mel.

Only `post_quant_conv` and `decoder` run at inference. The VAE encoder and `quant_conv` sit in every
official decoder.ckpt; `unused_encoder_shapes` lists them so the loader can check they are present
with the right shapes and then drop them (as the encoder side drops the MAE decoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VAEConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 8
    embed_dim: int = 8
    in_channels: int = 1
    out_channels: int = 1
    groups: int = 32


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GN → swish → 3×3 conv, twice, plus a 1×1 shortcut when the width changes (no time input)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all (time, freq) positions with 1×1 conv q/k/v."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)

        def tokens(conv: nn.Conv2d) -> torch.Tensor:
            return conv(h).reshape(batch, 1, channels, height * width).transpose(2, 3)

        out = F.scaled_dot_product_attention(
            tokens(self.q), tokens(self.k), tokens(self.v), scale=int(channels) ** -0.5
        )
        out = out.transpose(2, 3).reshape(batch, channels, height, width)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    def __init__(self, blocks: list[ResnetBlock], upsample: Upsample | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.upsample = upsample  # None stays a plain attribute: no `upsample.*` keys at level 0


class MelDecoder(nn.Module):
    """z [B, 8, 256, 16] → mel [B, 1, 1024, 64]; `up[i]` is level i, run from the deepest level up."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        levels = len(config.ch_mult)
        block_in = config.ch * config.ch_mult[-1]
        self.conv_in = nn.Conv2d(config.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, config.groups)
        ups: list[_Level] = []
        for level in reversed(range(levels)):
            block_out = config.ch * config.ch_mult[level]
            blocks = []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, config.groups))
                block_in = block_out
            ups.insert(0, _Level(blocks, Upsample(block_in) if level != 0 else None))
        self.up = nn.ModuleList(ups)
        self.norm_out = _norm(block_in, config.groups)
        self.conv_out = nn.Conv2d(block_in, config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(range(len(self.up))):
            stage = cast(_Level, self.up[level])  # __init__ fills `up` with _Level only
            for block in stage.block:
                h = block(h)
            if stage.upsample is not None:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VAEDecoder(nn.Module):
    """`post_quant_conv` + `decoder`, as held by the official `first_stage_model`."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.decoder = MelDecoder(config)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z already divided by scale_factor → mel [B, 1, 1024, 64] (time × mel bins)."""
        return self.decoder(self.post_quant_conv(z))


def unused_encoder_shapes(config: VAEConfig, prefix: str = "first_stage_model.") -> dict[str, tuple]:
    """Keys (and shapes) of the VAE encoder and `quant_conv`: in the file, never used to decode."""
    groups_free: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: int) -> None:
        groups_free[f"{name}.weight"] = (cout, cin, k, k)
        groups_free[f"{name}.bias"] = (cout,)

    def norm(name: str, ch: int) -> None:
        groups_free[f"{name}.weight"] = (ch,)
        groups_free[f"{name}.bias"] = (ch,)

    def resnet(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    ch, mult = config.ch, config.ch_mult
    conv("encoder.conv_in", config.in_channels, ch, 3)
    block_in = ch
    for level, m in enumerate(mult):
        block_out = ch * m
        for index in range(config.num_res_blocks):
            resnet(f"encoder.down.{level}.block.{index}", block_in, block_out)
            block_in = block_out
        if level != len(mult) - 1:
            conv(f"encoder.down.{level}.downsample.conv", block_in, block_in, 3)
    resnet("encoder.mid.block_1", block_in, block_in)
    norm("encoder.mid.attn_1.norm", block_in)
    for part in ("q", "k", "v", "proj_out"):
        conv(f"encoder.mid.attn_1.{part}", block_in, block_in, 1)
    resnet("encoder.mid.block_2", block_in, block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", block_in, 2 * config.z_channels, 3)
    conv("quant_conv", 2 * config.z_channels, 2 * config.embed_dim, 1)
    return {prefix + name: shape for name, shape in groups_free.items()}
