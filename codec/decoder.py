"""The SemantiCodec decoder: tokens → 16 kHz waveform (spec §4–§5), batched over windows and clips.

Pipeline per 10.24 s window: condition from tokens → DDIM (CFG, v-prediction UNet) → latent /
scale_factor → VAE decoder → mel → HiFi-GAN → 163 872 samples. Long token sequences are cut into
overlapping windows exactly like the official `decode`; window waveforms are joined with its linear
crossfade (same float64/float32 arithmetic) and trimmed to its length formula. All windows of all
clips go through each DDIM step together (in chunks of `max_batch_windows`), with the uncond and
cond UNet passes as one batched call.

Module names mirror the official decoder.ckpt: `model.diffusion_model.*` (UNet),
`first_stage_model.{post_quant_conv,decoder,vocoder}.*`, the schedule buffers and `scale_factor`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .condition import PE_DIM, ConditionBuilder
from .config import SAMPLE_RATE, SemantiCodecConfig
from .sampler import NoiseSource, ddim_sample, ddim_schedule
from .unet import UNet, UNetConfig
from .vae import VAEConfig, VAEDecoder, unused_encoder_shapes
from .vocoder import HiFiGAN, VocoderConfig

SEGMENT_SECONDS = 10.24
OVERLAP_RATIO = 0.0625
WINDOW_SAMPLES = 163_872  # 160·1024 + 32: what HiFi-GAN gives for one 1024-frame mel
# The schedule buffers the sampler reads; the other ones in the file are checked, then dropped.
USED_SCHEDULE = ("alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod")
UNUSED_SCHEDULE = (
    "logvar",
    "betas",
    "alphas_cumprod_prev",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
NUM_TIMESTEPS = 1000


@dataclass(frozen=True)
class DecoderConfig:
    """Widths of the decoder networks for a codec config.

    `tiny` keeps every structural constant (latent 8×256×16, mel 1024×64, upsampling factors,
    attention layout, 192-d PE, 160·L + 32 samples) and only narrows the networks: UNet
    model_channels 32 (levels 32/64/96/160, heads of 32 channels: 1/2/3/5, GroupNorm 32 groups as
    the official since every width is a multiple of 32); HiFi-GAN initial channels 32. One
    structural adaptation: the tiny VAE has ch 8 (levels 8/16/32) and therefore GroupNorm with 8
    groups instead of 32 — at ch 32 its full-resolution 1024×64 convolutions made it the slowest
    part of a tiny decode.
    """

    unet: UNetConfig
    vae: VAEConfig
    vocoder: VocoderConfig

    @classmethod
    def for_codec(cls, config: SemantiCodecConfig) -> DecoderConfig:
        context = 2 * config.feature_dim + PE_DIM
        if config.size == "full":
            return cls(UNetConfig(context), VAEConfig(), VocoderConfig())
        return cls(
            UNetConfig(context, model_channels=32),
            VAEConfig(ch=8, groups=8),
            VocoderConfig(initial_channels=32),
        )


class _Model(nn.Module):
    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.diffusion_model = unet


class FirstStage(VAEDecoder):
    """The used part of `first_stage_model`: post_quant_conv, decoder, vocoder."""

    def __init__(self, vae: VAEConfig, vocoder: VocoderConfig) -> None:
        super().__init__(vae)
        self.vocoder = HiFiGAN(vocoder)


class SemantiCodecDecoder(nn.Module):
    """Latent diffusion + VAE + vocoder; `conditions` supplies the token lookup tables."""

    # registered buffers (filled from the checkpoint; USED_SCHEDULE names the first three)
    alphas_cumprod: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    scale_factor: torch.Tensor

    def __init__(self, config: SemantiCodecConfig, conditions: ConditionBuilder) -> None:
        super().__init__()
        self.codec_config = config
        self.config = DecoderConfig.for_codec(config)
        if conditions.context_dim != self.config.unet.context_dim:
            raise ValueError(
                f"condition width {conditions.context_dim} != UNet context {self.config.unet.context_dim}"
            )
        self.conditions = conditions
        self.model = _Model(UNet(self.config.unet))
        self.first_stage_model = FirstStage(self.config.vae, self.config.vocoder)
        for name in USED_SCHEDULE:
            self.register_buffer(name, torch.zeros(NUM_TIMESTEPS))
        self.register_buffer("scale_factor", torch.tensor(1.0))
        self.compute_dtype = torch.float32

    @property
    def window_tokens(self) -> int:
        return self.codec_config.tokens_per_segment

    # -- pieces, each usable on its own ---------------------------------------------------------
    def _autocast(self):
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.scale_factor.device.type, dtype=self.compute_dtype)

    def unet(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model.diffusion_model(x, timesteps, context).float()

    def latent_to_mel(self, latent: torch.Tensor) -> torch.Tensor:
        """Final DDIM latent [B, 8, 256, 16] → mel [B, 1, 1024, 64] (official: z · (1/scale_factor))."""
        with self._autocast():
            return self.first_stage_model((1.0 / self.scale_factor) * latent).float()

    def mel_to_wave(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, 1, 1024, 64] → waveform [B, 163872]."""
        with self._autocast():
            return self.first_stage_model.vocoder(mel.squeeze(1).transpose(1, 2)).float()[:, 0]

    def schedule(self, steps: int):
        return ddim_schedule(
            self.alphas_cumprod, self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod, steps
        )

    @torch.inference_mode()
    def decode_windows(
        self,
        windows: Sequence[torch.Tensor],
        noise: NoiseSource,
        *,
        steps: int = 50,
        guidance: float = 2.0,
        batched_cfg: bool = True,
        max_batch_windows: int = 8,
    ) -> torch.Tensor:
        """Token windows (each int64 [m ≤ n, 2]) → waveforms float32 [W, 163872] on the CPU."""
        schedule = self.schedule(steps)
        waves = []
        for start in range(0, len(windows), max_batch_windows):
            chunk = list(range(start, min(start + max_batch_windows, len(windows))))
            cond, uncond = self.conditions.build([windows[i] for i in chunk])
            x_t, step_noise = noise.draw(chunk, schedule.steps)
            latent = ddim_sample(
                self.unet, schedule, cond, uncond, x_t, step_noise, guidance, batched_cfg=batched_cfg
            )
            waves.append(self.mel_to_wave(self.latent_to_mel(latent)).cpu())
        if not waves:
            return torch.empty(0, WINDOW_SAMPLES)
        return torch.cat(waves)


# -- the long-audio rule ---------------------------------------------------------------------------
def window_length(token_rate: int) -> int:
    return int(512 / (100 / token_rate))


def split_windows(
    tokens: torch.Tensor, window: int, overlap_ratio: float = OVERLAP_RATIO
) -> list[torch.Tensor]:
    """Official long_token_split_window: windows of `window` tokens, hop window − int(window·ratio);
    the remainder (1..window tokens) is the last window; an empty sequence gives no window."""
    hop = window - int(window * overlap_ratio)
    length = tokens.shape[0]
    out, start = [], 0
    while start + window < length:
        out.append(tokens[start : start + window])
        start += hop
    if length - start > 0:
        out.append(tokens[start:])
    return out


def overlap_samples() -> int:
    return int(SEGMENT_SECONDS * OVERLAP_RATIO * SAMPLE_RATE)


def overlap_add(windows: Sequence[torch.Tensor], overlap: int | None = None) -> torch.Tensor:
    """Official overlap_add_waveform: linear crossfade of `overlap` samples between windows.

    Same arithmetic: numpy's float64 linspace fades, each faded part rounded to float32, then the
    two summed in float32; the rest of each window appended.
    """
    overlap = overlap_samples() if overlap is None else overlap
    if not windows:
        return torch.empty(0)
    fade_in = torch.from_numpy(np.linspace(0, 1, overlap))
    fade_out = torch.from_numpy(np.linspace(1, 0, overlap))
    pieces = [windows[0].float().clone()]
    for window in windows[1:]:
        window = window.float()
        head = (window[:overlap].double() * fade_in).float()
        tail = (pieces[-1][-overlap:].double() * fade_out).float()
        pieces[-1][-overlap:] = tail + head
        pieces.append(window[overlap:].clone())
    return torch.cat(pieces)


def decoded_length(num_tokens: int, token_rate: int) -> int:
    """Official trim: int((T/8)·16·0.01·K · 16000) with K = 100/rate, in Python floats."""
    trim_duration = (num_tokens / 8) * 16 * 0.01 * (100 / token_rate)
    return int(trim_duration * SAMPLE_RATE)


def unused_decoder_keys(decoder: SemantiCodecDecoder) -> dict[str, tuple[int, ...]]:
    """What an official decoder.ckpt holds besides the used weights, with shapes: the other schedule
    buffers, `logvar`, the EMA copy of the UNet (`model_ema.<name without dots>`, never used at
    inference), and the VAE encoder + quant_conv."""
    shapes: dict[str, tuple[int, ...]] = {name: (NUM_TIMESTEPS,) for name in UNUSED_SCHEDULE}
    shapes["model_ema.decay"] = ()
    shapes["model_ema.num_updates"] = ()
    for name, param in decoder.model.named_parameters():
        shapes["model_ema." + name.replace(".", "")] = tuple(param.shape)
    shapes.update(unused_encoder_shapes(decoder.config.vae))
    return shapes
