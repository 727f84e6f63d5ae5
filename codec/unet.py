"""The latent-diffusion UNet of the SemantiCodec decoder (spec §5), keyed like the official checkpoint.

An openaimodel-style UNet: ResBlocks with a timestep embedding, stride-2 conv downsampling, nearest ×2
+ conv upsampling, and at every attention site two SpatialTransformers — a self-only one, then one
whose second attention reads the token condition. Module names reproduce the official state-dict
keys below `model.diffusion_model.` exactly (`input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight`
…), so a decoder.ckpt loads strictly without remapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

TIME_MAX_PERIOD = 10000


@dataclass(frozen=True)
class UNetConfig:
    """Widths of the UNet; `full()` is the official one, a tiny one only changes `model_channels`."""

    context_dim: int
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 3, 5)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1, 2, 3)  # downsample factors 2, 4, 8
    head_channels: int = 32
    in_channels: int = 8
    out_channels: int = 8
    groups: int = 32

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the activation dtype (as the official ResBlocks do)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(
            x.dtype
        )


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos | sin] of t·exp(−ln(10000)·k/half), in the official float32 operation order."""
    half = dim // 2
    freqs = torch.exp(-math.log(TIME_MAX_PERIOD) * torch.arange(0, half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs.to(timesteps.device)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """GN → SiLU → conv, + projected timestep embedding, GN → SiLU → conv, plus a (1×1) skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, out_channels),
            nn.SiLU(),
            nn.Dropout(0.0),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Attention(nn.Module):
    """Multi-head attention, q/k/v without bias; keys/values from `context` when one is given."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.scale = head_dim**-0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        source = x if context is None else context
        batch = x.shape[0]

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, t.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = heads(self.to_q(x)), heads(self.to_k(source)), heads(self.to_v(source))
        # The official attention mask is all ones, i.e. no mask.
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.to_out(out.transpose(1, 2).reshape(batch, x.shape[1], -1))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Dropout(0.0), nn.Linear(mult * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """x += attn1(LN x); x += attn2(LN x, context); x += FF(LN x). Registration order = the file's."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None) -> None:
        super().__init__()
        self.attn1 = Attention(dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GN(eps 1e-6) → 1×1 conv → transformer over (time, freq) row-major tokens → 1×1 conv, + input.

    `cross=False` is the self-only variant (its attn2 attends to x itself); `cross=True` reads the
    condition.
    """

    def __init__(
        self, channels: int, heads: int, head_dim: int, context_dim: int | None, groups: int
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.cross = context_dim is not None
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner, heads, head_dim, context_dim)])
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        batch, _, height, width = x.shape
        h = self.proj_in(self.norm(x))
        h = h.flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            h = block(h, context if self.cross else None)
        h = h.transpose(1, 2).reshape(batch, -1, height, width)
        return self.proj_out(h) + x


class Stage(nn.ModuleList):
    """One entry of input_blocks/middle_block/output_blocks: routes emb and context to its layers.

    A ModuleList (same `<index>.` state-dict keys as the official nn.Sequential), so its three-argument
    forward overrides nothing."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__(layers)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """v-prediction UNet: (x [B, 8, 256, 16], t [B], context [B, n, context_dim]) → v, same shape as x."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        mc, emb, groups = config.model_channels, config.time_embed_dim, config.groups
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))

        def attention(ch: int) -> list[nn.Module]:
            heads = ch // config.head_channels
            head_dim = ch // heads
            return [
                SpatialTransformer(ch, heads, head_dim, None, groups),
                SpatialTransformer(ch, heads, head_dim, config.context_dim, groups),
            ]

        self.input_blocks = nn.ModuleList([Stage(nn.Conv2d(config.in_channels, mc, 3, padding=1))])
        skip_channels = [mc]
        ch = mc
        last = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb, mult * mc, groups)]
                ch = mult * mc
                if level in config.attention_levels:
                    layers += attention(ch)
                self.input_blocks.append(Stage(*layers))
                skip_channels.append(ch)
            if level != last:
                self.input_blocks.append(Stage(Downsample(ch)))
                skip_channels.append(ch)
        self.middle_block = Stage(
            ResBlock(ch, emb, ch, groups), *attention(ch), ResBlock(ch, emb, ch, groups)
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for index in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb, mult * mc, groups)]
                ch = mult * mc
                if level in config.attention_levels:
                    layers += attention(ch)
                if level and index == config.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(Stage(*layers))
        self.out = nn.Sequential(
            GroupNorm32(groups, ch), nn.SiLU(), nn.Conv2d(mc, config.out_channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        skips = []
        h = x
        for stage in self.input_blocks:
            h = stage(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h).to(x.dtype)
