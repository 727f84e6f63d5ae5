"""`SemantiCodec`: the official model's tokens, batched, on any device, behind the `Codec` interface.

For people coming from the official package: `SemantiCodec(token_rate=50, semantic_vocab_size=16384,
weights=SOURCE)` then `.encode("a.wav")` gives the same int64 tokens [1, T, 2], and `.decode(tokens)`
the waveform (the decoder is loaded on that first decode). For pipelines:
`encode_batch` over many clips at once, or the segment-level calls that let CPU workers cut audio
and accelerator workers encode full batches of segments from many clips.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import config as C
from .audiomae import unused_decoder_shapes
from .checkpoint import (
    HUB_REPO,
    WeightFiles,
    file_digest,
    is_random_source,
    load_centroids,
    load_into,
    random_seed,
    read_state_dict,
    resolve_weights,
)
from .condition import ConditionBuilder
from .config import SemantiCodecConfig
from .decoder import (
    SemantiCodecDecoder,
    decoded_length,
    overlap_add,
    split_windows,
    unused_decoder_keys,
    window_length,
)
from .encoder import BATCHING, SemantiCodecEncoder
from .fbank import kaldi_fbank, normalize_fbank
from .interface import Segments
from .random_weights import random_centroids, random_decoder_state_dict, random_state_dict
from .resample import resample, to_codec_input
from .sampler import NoiseSource, ddim_timesteps

log = logging.getLogger(__name__)

# Bumped whenever a change here changes the tokens some input gets (part of the output identity).
TOKENS_VERSION = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Buffers of the VQ that only training uses; checked in the file, never loaded.
_VQ_TRAINING_BUFFERS = ("initted", "cluster_size", "embed_avg")
COMPONENTS = ("encoder", "decoder")


def codec_version() -> str:
    try:
        return version("semtok")
    except PackageNotFoundError:
        return "0+unknown"


def pick_device(device: str | torch.device | None) -> torch.device:
    """cuda, else mps, else cpu — the official order — unless the caller names one."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _encoder_ignored_keys(config: SemantiCodecConfig) -> dict[str, tuple[int, ...]]:
    codes = (1, C.ACOUSTIC_VOCAB)
    return {
        **unused_decoder_shapes(config),
        "quantizer._codebook.initted": (1,),
        "quantizer._codebook.cluster_size": codes,
        "quantizer._codebook.embed_avg": (*codes, config.feature_dim),
    }


def split_segments(waveform: torch.Tensor | np.ndarray, token_rate: int) -> Segments:
    """Pad like the official code, remove the global DC, cut into 10.24 s segments + look-ahead.

    The DC offset is the mean of the whole padded clip, computed on the CPU in float32 exactly as
    the official code does, so segments encoded anywhere, in any batch, give the whole clip's tokens.
    Needs no weights: CPU workers call it before the encode stage.
    """
    wave = torch.as_tensor(waveform, dtype=torch.float32).cpu().reshape(1, -1)
    length = wave.shape[1]
    segments = C.num_segments(length)
    padded = torch.nn.functional.pad(wave, (0, segments * C.SEGMENT_SAMPLES - length))
    padded = padded - padded.mean()
    # Room for the last segment's look-ahead; those frames are replaced by padding rows later.
    padded = torch.nn.functional.pad(padded, (0, C.SEGMENT_LOOKAHEAD))[0]
    samples = padded.unfold(0, C.SEGMENT_INPUT_SAMPLES, C.SEGMENT_SAMPLES).clone()
    valid = torch.full((segments,), C.FRAMES_PER_SEGMENT, dtype=torch.int64)
    # The official fbank over the padded clip has 1024·S − 2 frames; the rest are zero rows.
    valid[-1] = C.FRAMES_PER_SEGMENT - 2
    return Segments(samples=samples, valid_frames=valid, num_tokens=C.num_tokens(length, token_rate))


class SegmentPlan:
    """`split_segments` of a clip too long to hold in memory: the same segments, bit for bit, in batches.

    The caller keeps the clip, zero-padded to `padded_length` samples, where windows of it can be read
    (a local file). The DC offset must be the official one, the float32 mean of the whole padded clip:
    `dc_offset` takes it with the very reduction `split_segments` runs, over a memory-mapped array of
    the clip (file-backed pages, not anonymous memory). A streamed float32/float64 sum would not
    match it bit for bit (torch's reduction order depends on the length and the thread count).
    Subtracting it and cutting windows are per-sample steps, so `segments` may run on any piece.
    """

    def __init__(self, length: int, token_rate: int) -> None:
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.length = int(length)
        self.count = C.num_segments(self.length)
        self.padded_length = self.count * C.SEGMENT_SAMPLES
        self.num_tokens = C.num_tokens(self.length, token_rate)

    def dc_offset(self, padded: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The official DC offset: `padded` is the whole clip, zeros after `length`, `padded_length` long."""
        with warnings.catch_warnings():  # a read-only memory map: torch only reads it here
            warnings.simplefilter("ignore", UserWarning)
            wave = torch.as_tensor(padded)
        if wave.dtype != torch.float32 or wave.reshape(-1).shape[0] != self.padded_length:
            raise ValueError(
                f"expected {self.padded_length} float32 samples, got {wave.dtype} {tuple(wave.shape)}"
            )
        return wave.reshape(1, -1).mean()  # split_segments: padded [1, N] .mean()

    def window(self, start: int, stop: int) -> tuple[int, int]:
        """The range [lo, hi) of the padded clip that segments start..stop-1 read (hi <= padded_length)."""
        if not 0 <= start < stop <= self.count:
            raise ValueError(f"segments {start}..{stop} outside 0..{self.count}")
        lo = start * C.SEGMENT_SAMPLES
        return lo, min(self.padded_length, (stop - 1) * C.SEGMENT_SAMPLES + C.SEGMENT_INPUT_SAMPLES)

    def segments(
        self, window: torch.Tensor | np.ndarray, start: int, stop: int, dc: torch.Tensor
    ) -> Segments:
        """Segments start..stop-1 from the samples `window(start, stop)` names."""
        lo, hi = self.window(start, stop)
        piece = torch.as_tensor(window, dtype=torch.float32).reshape(-1)
        if piece.shape[0] != hi - lo:
            raise ValueError(
                f"window of segments {start}..{stop} has {hi - lo} samples, got {piece.shape[0]}"
            )
        piece = piece - dc
        # The look-ahead past the padded clip is zeros, not DC-removed zeros (split_segments pads after).
        need = (stop - start - 1) * C.SEGMENT_SAMPLES + C.SEGMENT_INPUT_SAMPLES
        piece = torch.nn.functional.pad(piece, (0, need - piece.shape[0]))
        samples = piece.unfold(0, C.SEGMENT_INPUT_SAMPLES, C.SEGMENT_SAMPLES).clone()
        valid = torch.full((stop - start,), C.FRAMES_PER_SEGMENT, dtype=torch.int64)
        if stop == self.count:
            valid[-1] = C.FRAMES_PER_SEGMENT - 2
        return Segments(samples=samples, valid_frames=valid, num_tokens=self.num_tokens)

    def batches(self, padded: torch.Tensor | np.ndarray, size: int) -> Iterator[Segments]:
        """All segments, `size` at a time, read from an array-like of the padded clip (e.g. a memmap)."""
        dc = self.dc_offset(padded)
        for start in range(0, self.count, size):
            stop = min(self.count, start + size)
            lo, hi = self.window(start, stop)
            yield self.segments(np.array(padded[lo:hi], dtype=np.float32), start, stop, dc)


def weights_digest(
    weights: str,
    config: SemantiCodecConfig,
    cache_dir: Path | None = None,
    *,
    files: WeightFiles | None = None,
) -> str:
    """What identifies the encoder weights: the seed for random ones, else file content digests."""
    if is_random_source(weights):
        return f"{weights}:{config.size}:r{config.token_rate}"
    files = files or resolve_weights(weights, config, parts=("encoder",), cache_dir=cache_dir)
    encoder = file_digest(files.part("encoder"), cache_dir)
    return f"{encoder[:16]}-{file_digest(files.codebook, cache_dir)[:16]}"


def fingerprint(
    config: SemantiCodecConfig, weights: str, digest: str, dtype: str, encode_batching: str = "official"
) -> dict[str, Any]:
    """The identity of the tokens a SemantiCodec replica makes (recorded with every output).

    `encode_batching` is named only when it is not the official default, so outputs made before the
    option existed keep their identity (and their dataset version).
    """
    identity = {
        "codec": SemantiCodec.name,
        "codec_version": codec_version(),
        "tokens_version": TOKENS_VERSION,
        "token_rate": config.token_rate,
        "semantic_vocab_size": config.semantic_vocab_size,
        "acoustic_vocab_size": C.ACOUSTIC_VOCAB,
        "frame_rate": config.frame_rate,
        "sample_rate": C.SAMPLE_RATE,
        "size": config.size,
        "weights": f"hub:{HUB_REPO}" if weights == "hub" else weights,
        "weights_digest": digest,
        "random_weights": is_random_source(weights),
        "dtype": dtype,
    }
    if encode_batching != "official":
        identity["encode_batching"] = encode_batching
    return identity


def _checked_encode_batching(value: str) -> str:
    if value not in BATCHING:
        raise ValueError(f"encode_batching must be one of {BATCHING}, got {value!r}")
    return value


class DecoderLoadError(RuntimeError):
    """The decoder, loaded on a replica's first decode, could not be loaded (cause chained)."""


class SemantiCodec:
    """SemantiCodec encoder and decoder.

    `components` says when the decoder (decoder.ckpt, ~1.1 GB, memory-mapped) is read:
    - None (default): on the first `decode`/`decode_batch` call, so an encode-only use never opens
      it and the official API (`SemantiCodec(...)` then `.decode(tokens)`) works as is;
    - `("encoder", "decoder")`: now, so a bad or missing decoder file fails at construction;
    - `("encoder",)`: never; decoding raises RuntimeError.
    Decoding needs the encoder's VQ codebook and k-means table, so the encoder part is always built
    (its weights are memory-mapped, so unused LSTM weights cost no RAM).

    `encode_batching="official"` (default): every segment gets the official tokens bit for bit in any
    batch (the official code encodes one segment at a time; see codec/encoder.py for how batches keep
    those bits). `"batched"`: the whole batch through every op, for devices where the official
    rounding cannot be batched; tokens may then differ from the official ones at near-ties.
    """

    name = "semanticodec"
    sample_rate = C.SAMPLE_RATE
    segment_input_samples = C.SEGMENT_INPUT_SAMPLES

    def __init__(
        self,
        token_rate: int = 50,
        semantic_vocab_size: int = 16384,
        weights: str | None = None,
        device: str | torch.device | None = None,
        size: str = "full",
        *,
        dtype: str = "float32",
        max_batch_segments: int = 16,
        cache_dir: str | Path | None = None,
        components: Sequence[str] | None = None,
        encode_batching: str = "official",
    ) -> None:
        self.config = SemantiCodecConfig(token_rate, semantic_vocab_size, size)
        # None: the decoder is loaded on the first decode (see the class docstring).
        self._decoder_on_demand = components is None
        components = ("encoder",) if components is None else components
        components = (components,) if isinstance(components, str) else tuple(components)
        unknown = sorted(set(components) - set(COMPONENTS))
        if unknown or not components:
            raise ValueError(f"components must be a non-empty subset of {COMPONENTS}, got {components!r}")
        self.components = tuple(c for c in COMPONENTS if c in components)
        if weights is None:
            if size == "tiny":
                raise ValueError("no official weights exist for size='tiny': pass weights='random:SEED'")
            weights = "hub"
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.encode_batching = _checked_encode_batching(encode_batching)
        self.weights = weights
        self.device = pick_device(device)
        self.dtype = dtype
        self.max_batch_segments = max_batch_segments
        self.random_weights = is_random_source(weights)
        if self.random_weights:
            log.warning("SemantiCodec is using RANDOM weights (%s): tokens are meaningless", weights)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.encoder, self.weights_digest = self._build_encoder(self.cache_dir)
        self.encoder.to(self.device).eval()
        self.encoder.set_compute_dtype(DTYPES[dtype])
        self.encoder.batching = encode_batching
        self.decoder: SemantiCodecDecoder | None = None
        if "decoder" in self.components:
            self.decoder = self._build_decoder(self.cache_dir).to(self.device).eval()

    def _require_decoder(self) -> SemantiCodecDecoder:
        """The decoder, loaded now if this replica loads it on demand and has not yet."""
        if self.decoder is not None:
            return self.decoder
        if not self._decoder_on_demand:
            raise RuntimeError(
                "this SemantiCodec was built without the decoder (components="
                f"{self.components!r}): pass components=('encoder', 'decoder') or leave "
                "components unset to load it on the first decode"
            )
        try:
            decoder = self._build_decoder(self.cache_dir).to(self.device).eval()
        except Exception as exc:
            raise DecoderLoadError(
                "this SemantiCodec was built without the decoder and loading it for this decode failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self.decoder = decoder
        self.components = COMPONENTS
        return decoder

    # -- construction -------------------------------------------------------------------------
    def _build_encoder(self, cache_dir: Path | None) -> tuple[SemantiCodecEncoder, str]:
        config = self.config
        centroid_shape = (config.semantic_vocab_size, config.feature_dim)
        if self.random_weights:
            seed = random_seed(self.weights)
            centroids = random_centroids(seed, config)
            with torch.device("meta"):  # no throw-away default init of a billion LSTM weights
                encoder = SemantiCodecEncoder(config, torch.empty(centroids.shape))
            encoder.semantic_quantizer.centroids = centroids
            state = random_state_dict(encoder.state_dict(), seed, config)
            encoder.load_state_dict(state, strict=True, assign=True)
            return encoder, weights_digest(self.weights, config, self.cache_dir)
        files = resolve_weights(self.weights, config, parts=("encoder",), cache_dir=cache_dir)
        centroids = load_centroids(files.codebook, centroid_shape)
        with torch.device("meta"):
            encoder = SemantiCodecEncoder(config, torch.empty(centroid_shape))
        encoder.semantic_quantizer.centroids = centroids
        load_into(
            encoder,
            read_state_dict(files.part("encoder")),
            where=str(files.part("encoder")),
            ignored=_encoder_ignored_keys(config),
            scalar_ok=frozenset({"quantizer._codebook.initted"}),
        )
        return encoder, weights_digest(self.weights, config, cache_dir, files=files)

    def _build_decoder(self, cache_dir: Path | None) -> SemantiCodecDecoder:
        """The decoder networks; official weights are checked strictly (unused keys named too)."""
        conditions = ConditionBuilder(
            self.encoder.quantizer, self.encoder.semantic_quantizer, self.config.tokens_per_segment
        )
        with torch.device("meta"):
            decoder = SemantiCodecDecoder(self.config, conditions)
        if self.random_weights:
            shapes = {name: tuple(t.shape) for name, t in decoder.state_dict().items()}
            state = random_decoder_state_dict(shapes, random_seed(self.weights))
            decoder.load_state_dict(state, strict=True, assign=True)
            return decoder
        files = resolve_weights(self.weights, self.config, parts=("decoder",), cache_dir=cache_dir)
        load_into(
            decoder,
            read_state_dict(files.part("decoder")),
            where=str(files.part("decoder")),
            ignored=unused_decoder_keys(decoder),
        )
        return decoder

    # -- construction from plain options (what pipeline/ passes around) ---------------------------
    OPTIONS = (
        "token_rate",
        "semantic_vocab_size",
        "weights",
        "size",
        "dtype",
        "max_batch_segments",
        "cache_dir",
        "components",
        "encode_batching",
    )

    @classmethod
    def from_options(
        cls, options: dict[str, Any], *, device: str | torch.device | None = None
    ) -> SemantiCodec:
        return cls(**cls._checked(options), device=device)

    @classmethod
    def describe(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The fingerprint a replica built from `options` will report, without loading the model."""
        opts = cls._checked(options)
        config = SemantiCodecConfig(
            opts.get("token_rate", 50), opts.get("semantic_vocab_size", 16384), opts.get("size", "full")
        )
        weights = opts.get("weights") or ("hub" if config.size == "full" else None)
        if weights is None:
            raise ValueError("no official weights exist for size='tiny': pass weights='random:SEED'")
        cache = Path(opts["cache_dir"]) if opts.get("cache_dir") else None
        return fingerprint(
            config,
            weights,
            weights_digest(weights, config, cache),
            opts.get("dtype", "float32"),
            _checked_encode_batching(opts.get("encode_batching", "official")),
        )

    @classmethod
    def segmenter(cls, options: dict[str, Any]) -> Callable[[torch.Tensor], Segments]:
        """A weight-free function waveform → `Segments`, for CPU workers."""
        token_rate = cls._checked(options).get("token_rate", 50)
        SemantiCodecConfig(token_rate)  # validates
        return lambda waveform: split_segments(waveform, token_rate)

    @classmethod
    def segment_plan(cls, options: dict[str, Any]) -> Callable[[int], SegmentPlan]:
        """A weight-free function clip length → `SegmentPlan`, for CPU workers cutting long clips
        kept out of memory (the same segments `segmenter` makes)."""
        token_rate = cls._checked(options).get("token_rate", 50)
        SemantiCodecConfig(token_rate)  # validates
        return lambda length: SegmentPlan(length, token_rate)

    @classmethod
    def check_decode_options(cls, options: dict[str, Any]) -> None:
        """Raise ValueError for `decode_batch` options no decode can run with, before any model
        loads (a job must not find out item by item that its step count is impossible)."""
        unknown = sorted(set(options) - {"steps", "guidance", "dtype", "batched_cfg", "max_batch_windows"})
        if unknown:
            raise ValueError(f"unknown decode option(s) {unknown}")
        steps = options.get("steps", 50)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        ddim_timesteps(steps)
        if options.get("dtype", "float32") not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {options['dtype']!r}")
        guidance = float(options.get("guidance", 2.0))
        if not np.isfinite(guidance) or guidance < 0:
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")

    @classmethod
    def _checked(cls, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            raise ValueError(f"unknown SemantiCodec option(s) {unknown}; known: {list(cls.OPTIONS)}")
        return {k: v for k, v in options.items() if v is not None}

    # -- the Codec interface ------------------------------------------------------------------
    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def vocab_sizes(self) -> tuple[int, int]:
        return (self.config.semantic_vocab_size, C.ACOUSTIC_VOCAB)

    @property
    def tokens_per_segment(self) -> int:
        return self.config.tokens_per_segment

    def num_tokens(self, num_samples: int) -> int:
        return C.num_tokens(num_samples, self.config.token_rate)

    def split_segments(self, waveform: torch.Tensor | np.ndarray) -> Segments:
        return split_segments(waveform, self.config.token_rate)

    def segment_features(self, samples: torch.Tensor, valid_frames: torch.Tensor) -> torch.Tensor:
        """Normalised fbank [S, 1024, 128] of segments, computed on the model's device."""
        fbank = kaldi_fbank(samples.to(self.device, torch.float32))
        frame_index = torch.arange(fbank.shape[1], device=fbank.device)
        padding = frame_index[None, :] >= valid_frames.to(fbank.device)[:, None]
        fbank = fbank.masked_fill(padding[..., None], 0.0)
        return normalize_fbank(fbank)

    def encode_segments(self, samples: torch.Tensor, valid_frames: torch.Tensor) -> torch.Tensor:
        outputs = []
        for start in range(0, samples.shape[0], self.max_batch_segments):
            stop = start + self.max_batch_segments
            features = self.segment_features(samples[start:stop], valid_frames[start:stop])
            outputs.append(self.encoder(features))
        if not outputs:
            return torch.empty(0, self.tokens_per_segment, 2, dtype=torch.int64, device=self.device)
        return torch.cat(outputs)

    def join_segment_tokens(self, segment_tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
        return segment_tokens.reshape(-1, segment_tokens.shape[-1])[:num_tokens]

    def encode_batch(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens of B clips (mono 16 kHz, [B, N] padded, true `lengths`), all segments batched.

        Returns int64 tokens [B, T_max, 2] (rows past a clip's length are −1) and lengths [B].
        """
        waveforms = torch.as_tensor(waveforms, dtype=torch.float32)
        if waveforms.dim() == 1:
            waveforms = waveforms[None]
        if lengths is None:
            lengths = torch.full((waveforms.shape[0],), waveforms.shape[1], dtype=torch.int64)
        clips = [self.split_segments(waveforms[i, : int(n)]) for i, n in enumerate(lengths)]
        if not clips:
            return (
                torch.empty(0, 0, 2, dtype=torch.int64, device=self.device),
                torch.empty(0, dtype=torch.int64),
            )
        tokens = self.encode_segments(
            torch.cat([c.samples for c in clips]), torch.cat([c.valid_frames for c in clips])
        )
        token_lengths = torch.tensor([c.num_tokens for c in clips], dtype=torch.int64)
        out = torch.full(
            (len(clips), int(token_lengths.max()), 2), -1, dtype=torch.int64, device=tokens.device
        )
        start = 0
        for index, clip in enumerate(clips):
            count = clip.samples.shape[0]
            out[index, : clip.num_tokens] = self.join_segment_tokens(
                tokens[start : start + count], clip.num_tokens
            )
            start += count
        return out, token_lengths

    def decode_batch(
        self,
        tokens: torch.Tensor,
        token_lengths: torch.Tensor | None = None,
        *,
        steps: int = 50,
        guidance: float = 2.0,
        seed: int | Sequence[int] | None = None,
        noise: tuple[torch.Tensor, torch.Tensor] | None = None,
        batched_cfg: bool = True,
        max_batch_windows: int = 8,
        dtype: str = "float32",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms of B token sequences ([B, T_max, 2], true `token_lengths`), all windows batched.

        Returns (float32 [B, N_max] on the CPU, zero past each length; int64 lengths [B]), each
        clip decoded exactly as the official `decode` (windows, crossfade, trim) would.
        Noise, per window x_T then one draw per step (the official order):
        - `seed=None`: torch's global CPU generator, clip after clip — after `torch.manual_seed(s)`
          this is the official decode's stream (CPU);
        - `seed=int` (or one per clip): each clip draws from its own generator seeded with it, so a
          clip decodes the same alone or in any batch;
        - `noise=(x_T [W, 8, 256, 16], step_noise [W, S, 8, 256, 16])`: explicit, for all windows of
          all clips in order.
        `dtype="bfloat16"` runs the networks under autocast (GPU option; official is float32).
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 3 or tokens.shape[-1] != 2:
            raise ValueError(f"tokens must be [B, T, 2], got {tuple(tokens.shape)}")
        decoder = self._require_decoder()
        if token_lengths is None:
            token_lengths = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.int64)
        lengths = [int(n) for n in torch.as_tensor(token_lengths).cpu()]
        size = window_length(self.config.token_rate)
        windows: list[torch.Tensor] = []
        owners: list[int] = []
        for clip, count in enumerate(lengths):
            parts = split_windows(tokens[clip, :count].cpu(), size)
            windows += parts
            owners += [clip] * len(parts)
        source = self._noise_source(owners, len(lengths), seed, noise)
        decoder.compute_dtype = DTYPES[dtype]
        waves = decoder.decode_windows(
            windows,
            source,
            steps=steps,
            guidance=guidance,
            batched_cfg=batched_cfg,
            max_batch_windows=max_batch_windows,
        )
        clips = []
        for clip, count in enumerate(lengths):
            joined = overlap_add([waves[i] for i, o in enumerate(owners) if o == clip])
            clips.append(joined[: decoded_length(count, self.config.token_rate)])
        out_lengths = torch.tensor([len(c) for c in clips], dtype=torch.int64)
        out = torch.zeros(len(clips), int(out_lengths.max()) if clips else 0)
        for clip, wave in enumerate(clips):
            out[clip, : len(wave)] = wave
        return out, out_lengths

    @staticmethod
    def _noise_source(
        owners: list[int],
        clips: int,
        seed: int | Sequence[int] | None,
        noise: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> NoiseSource:
        if noise is not None:
            if seed is not None:
                raise ValueError("give seed or noise, not both")
            x_t, step_noise = noise
            if x_t.shape[0] != len(owners) or step_noise.shape[0] != len(owners):
                raise ValueError(f"explicit noise for {x_t.shape[0]} windows, the tokens make {len(owners)}")
            return NoiseSource(explicit=(x_t, step_noise))
        if seed is None:
            return NoiseSource(generators=[None] * len(owners))
        seeds = [seed] * clips if isinstance(seed, int) else list(seed)
        if len(seeds) != clips:
            raise ValueError(f"{len(seeds)} seeds for {clips} clips")
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        return NoiseSource(generators=[generators[o] for o in owners])

    def fingerprint(self) -> dict[str, Any]:
        return fingerprint(self.config, self.weights, self.weights_digest, self.dtype, self.encode_batching)

    # -- the official package's API -------------------------------------------------------------
    def load_audio(self, path: str | Path) -> torch.Tensor:
        """A file as the official reader sees it: float32, all channels resampled to 16 kHz, channel 0.

        The same function (`codec.resample.to_codec_input`) turns the pipeline's decoded frames into
        codec input, so a file tokenized here and by the pipeline gets the same tokens.
        """
        import soundfile

        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return torch.from_numpy(to_codec_input(data, rate, self.sample_rate))

    def encode(
        self, audio: str | Path | torch.Tensor | np.ndarray, sample_rate: int | None = None
    ) -> torch.Tensor:
        """Tokens int64 [1, T, 2] (semantic, acoustic) of one file or mono waveform, on the device."""
        if isinstance(audio, (str, Path)):
            wave = self.load_audio(audio)
        else:
            wave = torch.as_tensor(audio, dtype=torch.float32)
            if sample_rate is not None and sample_rate != self.sample_rate:
                wave = resample(wave.reshape(1, -1), sample_rate, self.sample_rate)[0]
        tokens, lengths = self.encode_batch(wave.reshape(1, -1))
        return tokens[:, : int(lengths[0])]

    def decode(self, tokens: torch.Tensor, seed: int | None = None, **options: Any) -> np.ndarray:
        """Official-style decode: tokens [1, T, 2] → numpy float32 [1, 1, N] at 16 kHz.

        Draws from torch's global CPU generator in the official order; `seed` first calls
        `torch.manual_seed(seed)`, so `decode(tokens, seed=s)` equals the official
        `torch.manual_seed(s); codec.decode(tokens)` run on the CPU.
        """
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 3 or tokens.shape[0] != 1:
            raise ValueError(f"decode takes tokens [1, T, 2], got {tuple(tokens.shape)}")
        self._require_decoder()  # loading first: the seed below then seeds only the sampling
        if seed is not None:
            torch.manual_seed(seed)
        wave, lengths = self.decode_batch(tokens, None, seed=None, **options)
        return wave[:, : int(lengths[0])].numpy()[:, None, :]
