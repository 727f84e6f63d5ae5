"""HiFi-GAN (V1-type generator) of the SemantiCodec decoder: 64-bin mel → 16 kHz waveform (spec §5).

The official checkpoint stores it with weight norm already removed, so every conv has plain
`weight`/`bias` keys under `first_stage_model.vocoder.`. A mel of L frames gives 160·L + 32 samples
(the first transposed conv yields 5L + 1 frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.1


@dataclass(frozen=True)
class VocoderConfig:
    num_mels: int = 64
    initial_channels: int = 1024
    upsample_rates: tuple[int, ...] = (5, 4, 2, 2, 2)
    upsample_kernels: tuple[int, ...] = (16, 16, 8, 4, 4)
    resblock_kernels: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[int, ...] = (1, 3, 5)


def _same(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlock(nn.Module):
    """Three units of lrelu → dilated conv → lrelu → conv, each added back to its input."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=_same(kernel, d)) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=_same(kernel)) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            x = conv2(F.leaky_relu(conv1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE)) + x
        return x


class HiFiGAN(nn.Module):
    def __init__(self, config: VocoderConfig) -> None:
        super().__init__()
        self.num_kernels = len(config.resblock_kernels)
        ch = config.initial_channels
        self.conv_pre = nn.Conv1d(config.num_mels, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for index, (rate, kernel) in enumerate(
            zip(config.upsample_rates, config.upsample_kernels, strict=True)
        ):
            cin, cout = ch // 2**index, ch // 2 ** (index + 1)
            self.ups.append(nn.ConvTranspose1d(cin, cout, kernel, rate, padding=(kernel - rate) // 2))
            for k in config.resblock_kernels:
                self.resblocks.append(ResBlock(cout, k, config.resblock_dilations))
        self.conv_post = nn.Conv1d(cout, 1, 7, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, num_mels, L] → waveform [B, 1, 160·L + 32] in [−1, 1]."""
        x = self.conv_pre(mel)
        for index, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[index * self.num_kernels : (index + 1) * self.num_kernels]
            total = blocks[0](x)
            for block in blocks[1:]:
                total = total + block(x)
            x = total / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))  # library default slope 0.01, as the official
        return torch.tanh(x)
