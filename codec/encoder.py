"""The SemantiCodec encoder: fbank segments → (semantic, acoustic) token pairs (spec §2–§4).

Semantic path: AudioMAE features pooled to the token rate, nearest k-means centroid.
Acoustic path: BiLSTM over [feature ‖ centroid] (trailing padding rows set to −1), a bias-free linear
layer, nearest VQ code. Every segment is independent, so any number of segments from any clips are
encoded as one batch. Module names mirror the official checkpoint (`audiomae.model.*`, `encoder.*`,
`encoder_output_linear.weight`, `quantizer._codebook.embed`).

Batching and the official bits. The official code encodes one segment at a time (its `forward` walks a
[1, 1024·S, 128] fbank in 1024-frame windows), so every op sees one segment's shapes. Two kinds of op
round a row differently inside a batch on the CPU (measured with the full-size golden weights):
- dense layers through MKL: the output linear layer (6144→1536) at 2 threads gives other last bits
  for 8 segments (2048 rows) than for one (256 rows); the library picks its kernel by shape and
  thread count. AudioMAE and the quantisers' products happened to agree, with no such promise;
- the BiLSTM through oneDNN: for one sequence it computes the input projection of all steps at once
  and adds the recurrent product per step; for several it fuses both products into one sum per step
  when the input width equals the hidden width (the first layer here: 2·D = hidden).
The differences are last-bit (≤ ~1.5e-6) but a near-tie VQ decision can flip. So with
`batching="official"` (default) every op runs on one segment at a time, as in the official code,
except the BiLSTM (most of the time, where batching pays): `BatchOneLSTM` gives a batch of sequences
the single-sequence rounding. With one zero input feature more (and a zero weight column) the widths
differ, oneDNN never fuses, and every row gets the bits it gets alone. That rests on oneDNN's
internals, so each batch size is first checked on the real weights (a few steps, alone vs together);
where the check fails (another ISA, library or device) rows run one at a time: exact, slower.
`batching="batched"` runs the whole batch through every op: fastest where the official rounding cannot
be batched (e.g. a GPU where the check fails), but tokens may differ from the official ones, and with
the batch's composition, at near-ties.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import torch
from torch import nn

from .audiomae import AudioMAE
from .config import ACOUSTIC_VOCAB, FREQ_PATCHES, TIME_PATCHES, SemantiCodecConfig
from .quantizers import KMeansQuantizer, VectorQuantizer

INACTIVE_STD = 1e-7
# How a batch of segments runs through the encoder (`SemantiCodecEncoder.batching`, module docstring):
# "official": each segment gets the bits the official code gives it, in any batch;
# "batched": the whole batch through every op (a lone segment's BiLSTM runs as two rows, so on the CPU
#   its BiLSTM bits are those it gets in any batch).
BATCHING = ("official", "batched")
# Steps of the random sequences that check, per batch size, that batching keeps the bits.
PROBE_STEPS = 8

log = logging.getLogger(__name__)


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
    """AudioMAE → pooled features → semantic k-means tokens and BiLSTM → acoustic VQ tokens."""

    batch_one_lstm: BatchOneLSTM  # kept out of the module tree (set through __dict__): no state-dict keys

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
        self.batching = "official"  # see BATCHING
        # a plain attribute, not a submodule: the checkpoint's keys stay those of the official model
        self.__dict__["batch_one_lstm"] = BatchOneLSTM(self.encoder)

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Run AudioMAE and the BiLSTM in `dtype`; features, quantisers and tables stay float32."""
        for module in (self.audiomae, self.encoder, self.encoder_output_linear):
            module.to(dtype)
        self.compute_dtype = dtype

    def _each(self, module, rows: torch.Tensor) -> torch.Tensor:
        """`module` over `rows` with the official shapes (one segment per call), or batched."""
        if self.batching == "batched" or rows.shape[0] <= 1:
            return module(rows)
        return torch.cat([module(rows[i : i + 1]) for i in range(rows.shape[0])])

    def _run_lstm(self, rows: torch.Tensor) -> torch.Tensor:
        if self.batching == "official":
            return self.batch_one_lstm(rows)
        if rows.shape[0] == 1:
            return self.encoder(rows.repeat(2, 1, 1))[0][:1]
        return self.encoder(rows)[0]

    @torch.inference_mode()
    def forward(self, fbank: torch.Tensor, *, intermediates: bool = False):
        """Normalised fbank segments [S, 1024, 128] → tokens int64 [S, tokens_per_segment, 2]."""
        if self.batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {self.batching!r}")
        with exact_float32_convolutions(fbank.device, self.compute_dtype):
            return self._forward(fbank, intermediates=intermediates)

    def _forward(self, fbank: torch.Tensor, *, intermediates: bool):
        config = self.config
        active = active_token_counts(fbank, config.tokens_per_segment)
        patches = self._each(self.audiomae, fbank.to(self.compute_dtype))
        pooled = pool_patches(patches, config.stack_factor).float()
        semantic = self._each(self.semantic_quantizer, pooled)
        lstm_input = torch.cat([pooled, self.semantic_quantizer.lookup(semantic)], dim=-1)
        for index, count in enumerate(active):
            lstm_input[index, count:] = -1.0
        lstm_output = self._run_lstm(lstm_input.to(self.compute_dtype))
        residual = self._each(self.encoder_output_linear, lstm_output)
        acoustic = self._each(self.quantizer, residual)
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


@contextlib.contextmanager
def exact_float32_convolutions(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """cuDNN convolutions without TF32 while a float32 encoder runs on a GPU.

    PyTorch lets cuDNN round float32 convolutions to TF32 by default; on an H200 that moved 0.4 % of
    the acoustic tokens off the CPU's (official) ones, and none with TF32 off. The caller's setting
    is restored on exit.
    """
    if device.type != "cuda" or dtype != torch.float32:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


class BatchOneLSTM:
    """Runs a batch-first BiLSTM over many sequences with the bits each gets alone (batch 1).

    A lone sequence goes through the module itself: that is the official call. Several go through a
    twin LSTM whose first layer takes one zero feature more (so oneDNN never fuses its two products,
    see the module docstring) if `matches(count)` showed, on the real weights, that this twin gives
    every row the bits it gets alone; otherwise one at a time. The twin shares every weight with the
    module; on the CPU its wider first-layer matrices also hold the module's own as views, so no
    memory is doubled (elsewhere they are copies: cuDNN wants contiguous weights).
    """

    def __init__(self, lstm: nn.LSTM) -> None:
        if not (lstm.batch_first and lstm.bias) or lstm.proj_size:
            raise ValueError("BatchOneLSTM needs a batch-first LSTM with biases and no projection")
        self.lstm = lstm
        self._twin: nn.LSTM | None = None
        self._twin_key: tuple | None = None
        self._matches: dict[tuple, bool] = {}
        self._probe_rows: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @torch.inference_mode()  # as the official code (no_grad): with autograd on, oneDNN rounds otherwise
    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        count = rows.shape[0]
        if count <= 1:
            return self.lstm(rows)[0]
        if self.matches(count, device=rows.device, dtype=rows.dtype):
            return self._twin_forward(rows)
        return torch.cat([self.lstm(rows[i : i + 1])[0] for i in range(count)])

    @torch.inference_mode()
    def matches(self, count: int, *, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether the twin gives `count` rows their batch-1 bits here (checked once per setting).

        The check's rows are random sequences of a few steps, the same for every count, each run
        alone once per setting (a full-size call costs seconds, most of it oneDNN reordering the
        weights), so checking every batch size up to N costs N lone runs in all.
        """
        self._twin_module()  # first: new weights drop the verdicts and rows of the old ones
        threads = torch.get_num_threads() if device.type == "cpu" else 0
        setting = (str(device), dtype, threads, torch.backends.mkldnn.enabled)
        key = (count, *setting)
        if key not in self._matches:
            rows = self._probe_rows.setdefault(setting, [])
            while len(rows) < count:
                # a private generator: the global one must not move (the official decode draws from it)
                generator = torch.Generator().manual_seed(len(rows))
                probe = torch.randn(1, PROBE_STEPS, self.lstm.input_size, generator=generator)
                probe = probe.to(device, dtype)
                rows.append((probe, self.lstm(probe)[0]))
            together = self._twin_forward(torch.cat([probe for probe, _ in rows[:count]]))
            ok = bool(torch.equal(together, torch.cat([alone for _, alone in rows[:count]])))
            if not ok:
                log.warning(
                    "batched BiLSTM rows do not keep their batch-1 bits on %s (%s, %d rows, %d threads): "
                    "running them one at a time to keep the official tokens (slower)",
                    device,
                    dtype,
                    count,
                    threads,
                )
            self._matches[key] = ok
        return self._matches[key]

    def _twin_forward(self, rows: torch.Tensor) -> torch.Tensor:
        wide = torch.cat([rows, rows.new_zeros(*rows.shape[:2], 1)], dim=-1)
        return self._twin_module()(wide)[0]

    def _twin_module(self) -> nn.LSTM:
        """The twin, rebuilt whenever the module's weights were replaced or written (load, `.to()`)."""
        if self._twin is not None and self._weights_key() == self._twin_key:
            return self._twin
        self._matches.clear()
        self._probe_rows.clear()
        lstm = self.lstm
        with torch.device("meta"):  # shapes only; every weight is set below
            twin = nn.LSTM(
                lstm.input_size + 1,
                lstm.hidden_size,
                num_layers=lstm.num_layers,
                bias=True,
                batch_first=True,
                bidirectional=lstm.bidirectional,
            )
        # normal tensors even when first called under inference_mode: the module keeps using them
        with torch.inference_mode(False), torch.no_grad():
            for name in lstm._flat_weights_names:
                weight = getattr(lstm, name)
                if name.startswith("weight_ih_l0"):
                    wider = weight.new_zeros(weight.shape[0], weight.shape[1] + 1)
                    wider[:, :-1] = weight
                    if weight.device.type == "cpu":  # the module now reads the twin's storage; on
                        weight.data = wider[:, :-1]  # GPUs cuDNN wants its own weights contiguous
                    weight = nn.Parameter(wider, requires_grad=False)
                setattr(twin, name, weight)
        self._twin = twin.eval()
        self._twin_key = self._weights_key()
        return self._twin

    def _weights_key(self) -> tuple:
        """Changes when a weight is replaced or written in place (`_version` counts in-place writes)."""
        weights = [getattr(self.lstm, name) for name in self.lstm._flat_weights_names]
        return tuple((w.data_ptr(), w._version, w.dtype, str(w.device)) for w in weights)
