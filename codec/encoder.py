"""The SemantiCodec encoder: fbank segments → (semantic, acoustic) token pairs (spec §2–§4).

Semantic path: AudioMAE features pooled to the token rate, nearest k-means centroid.
Acoustic path: BiLSTM over [feature ‖ centroid] (trailing padding rows set to −1), a bias-free linear
layer, nearest VQ code. Every segment is independent, so any number of segments from any clips are
encoded as one batch. Module names mirror the official checkpoint (`audiomae.model.*`, `encoder.*`,
`encoder_output_linear.weight`, `quantizer._codebook.embed`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .audiomae import AudioMAE
from .config import ACOUSTIC_VOCAB, FREQ_PATCHES, TIME_PATCHES, SemantiCodecConfig
from .quantizers import KMeansQuantizer, VectorQuantizer

INACTIVE_STD = 1e-7


def pool_patches(features: torch.Tensor, stack_factor: int) -> torch.Tensor:
    """AudioMAE patch features [B, 512, C] → token features [B, 512/K, C·K] (spec §3 pooling).

    K=2 joins frequency pairs (f=2j, 2j+1); K=4 joins 2×2 blocks in the order (dt, df). Tokens stay
    time-major.
    """
    batch, _, channels = features.shape
    grid = features.reshape(batch, TIME_PATCHES, FREQ_PATCHES, channels)
    if stack_factor == 1:
        return features
    if stack_factor == 2:
        return grid.reshape(batch, TIME_PATCHES * FREQ_PATCHES // 2, channels * 2)
    if stack_factor == 4:
        blocks = grid.reshape(batch, TIME_PATCHES // 2, 2, FREQ_PATCHES // 2, 2, channels)
        blocks = blocks.permute(0, 1, 3, 2, 4, 5)
        return blocks.reshape(batch, TIME_PATCHES * FREQ_PATCHES // 4, channels * 4)
    raise ValueError(f"unsupported stack factor {stack_factor}")


def active_token_counts(fbank: torch.Tensor, tokens_per_segment: int) -> list[int]:
    """Per segment, how many leading tokens carry audio; the rest are treated as padding.

    A frame is inactive when its 128 mel values are constant (torch's unbiased std ≤ 1e-7); only
    trailing inactive frames count. Quirk kept from the official code: a segment with exactly one
    active frame counts as all padding.
    """
    inactive = torch.std(fbank.float(), dim=-1) <= INACTIVE_STD  # [S, frames]
    frames = fbank.shape[-2]
    active = (~inactive).cpu()
    counts = []
    for row, any_inactive in zip(active, inactive.any(dim=-1).cpu().tolist(), strict=True):
        if not any_inactive:
            active_frames = frames
        else:
            positions = torch.nonzero(row).flatten()
            active_frames = 0 if positions.numel() <= 1 else int(positions[-1]) + 1
        counts.append(math.ceil(tokens_per_segment * (active_frames / frames)))
    return counts


class SemantiCodecEncoder(nn.Module):
    def __init__(self, config: SemantiCodecConfig, centroids: torch.Tensor) -> None:
        super().__init__()
        dim = config.feature_dim
        if tuple(centroids.shape) != (config.semantic_vocab_size, dim):
            raise ValueError(
                f"k-means table has shape {tuple(centroids.shape)}, expected "
                f"({config.semantic_vocab_size}, {dim}) for {config}"
            )
        self.config = config
        self.audiomae = AudioMAE(config)
        self.encoder = nn.LSTM(
            2 * dim,
            config.lstm_hidden,
            num_layers=config.lstm_layers,
            bias=True,
            batch_first=True,
            bidirectional=True,
        )
        self.encoder_output_linear = nn.Linear(2 * config.lstm_hidden, dim, bias=False)
        self.quantizer = VectorQuantizer(ACOUSTIC_VOCAB, dim)
        self.semantic_quantizer = KMeansQuantizer(centroids)
        self.compute_dtype = torch.float32
        # The BiLSTM runs on at least this many rows (a lone segment is repeated, its first copy
        # kept). 1 (default) is the official behaviour. On the CPU, oneDNN's float32 LSTM rounds a
        # single sequence differently from several (all batch sizes >= 2 agree bit for bit), so 2
        # makes every segment's tokens independent of its batch, at no cost in time (the recurrence
        # reads the same weights for 1 or 2 rows), but batch-1 tokens then differ from the official
        # code's in the last bits: not a default.
        self.lstm_min_batch = 1

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Run AudioMAE and the BiLSTM in `dtype`; features, quantisers and tables stay float32."""
        for module in (self.audiomae, self.encoder, self.encoder_output_linear):
            module.to(dtype)
        self.compute_dtype = dtype

    def _run_lstm(self, rows: torch.Tensor) -> torch.Tensor:
        count = rows.shape[0]
        if 0 < count < self.lstm_min_batch:
            repeats = -(-self.lstm_min_batch // count)
            return self.encoder(rows.repeat(repeats, 1, 1))[0][:count]
        return self.encoder(rows)[0]

    @torch.inference_mode()
    def forward(self, fbank: torch.Tensor, *, intermediates: bool = False):
        """Normalised fbank segments [S, 1024, 128] → tokens int64 [S, tokens_per_segment, 2]."""
        config = self.config
        active = active_token_counts(fbank, config.tokens_per_segment)
        patches = self.audiomae(fbank.to(self.compute_dtype))
        pooled = pool_patches(patches, config.stack_factor).float()
        semantic = self.semantic_quantizer(pooled)
        lstm_input = torch.cat([pooled, self.semantic_quantizer.lookup(semantic)], dim=-1)
        for index, count in enumerate(active):
            lstm_input[index, count:] = -1.0
        lstm_output = self._run_lstm(lstm_input.to(self.compute_dtype))
        residual = self.encoder_output_linear(lstm_output)
        acoustic = self.quantizer(residual)
        tokens = torch.stack([semantic, acoustic], dim=-1)
        if not intermediates:
            return tokens
        return tokens, {
            "audiomae_features": patches.float(),
            "pooled_features": pooled,
            "semantic_ids": semantic,
            "lstm_input": lstm_input,
            "lstm_output": lstm_output.float(),
            "linear_output": residual.float(),
            "acoustic_ids": acoustic,
            "active_tokens": active,
        }
