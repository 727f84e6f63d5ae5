"""Architecture constants of SemantiCodec, per token rate and size.

One `SemantiCodecConfig` fixes every width the state dict depends on. `size="full"` is the official
architecture (spec §3–§4); `size="tiny"` keeps the structure (patch grid, pooling, padding rules,
segment length, vocabularies) with small widths and depths, for fast tests and demos.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SAMPLE_RATE = 16_000
SEGMENT_SAMPLES = 163_840  # 10.24 s, one AudioMAE input of 1024 fbank frames
FRAMES_PER_SEGMENT = 1024
MEL_BINS = 128
HOP_SAMPLES = 160  # 10 ms fbank hop
WIN_SAMPLES = 400  # 25 ms fbank window
# Samples a segment needs beyond its 10.24 s: its last fbank frame starts at 160*1023 and spans 400.
SEGMENT_LOOKAHEAD = HOP_SAMPLES * (FRAMES_PER_SEGMENT - 1) + WIN_SAMPLES - SEGMENT_SAMPLES
SEGMENT_INPUT_SAMPLES = SEGMENT_SAMPLES + SEGMENT_LOOKAHEAD  # 164080
PATCH_SECONDS = 0.16  # one AudioMAE time patch (16 frames)
PATCH = 16
TIME_PATCHES = FRAMES_PER_SEGMENT // PATCH  # 64
FREQ_PATCHES = MEL_BINS // PATCH  # 8
ACOUSTIC_VOCAB = 8192
TOKEN_RATES = (25, 50, 100)
SEMANTIC_VOCABS = (4096, 8192, 16384, 32768)
LSTM_LAYERS = {100: 4, 50: 3, 25: 2}
CODEBOOK_FOLDER = {
    100: "combine_512_audioset_dominate",
    50: "combine_256_audioset_dominate",
    25: "combine_128_audioset_dominate",
}


@dataclass(frozen=True)
class SemantiCodecConfig:
    token_rate: int = 50
    semantic_vocab_size: int = 16384
    size: str = "full"

    def __post_init__(self) -> None:
        if self.token_rate not in TOKEN_RATES:
            raise ValueError(f"token_rate must be one of {TOKEN_RATES}, got {self.token_rate!r}")
        if self.semantic_vocab_size not in SEMANTIC_VOCABS:
            raise ValueError(
                f"semantic_vocab_size must be one of {SEMANTIC_VOCABS}, got {self.semantic_vocab_size!r}"
            )
        if self.size not in ("full", "tiny"):
            raise ValueError(f"size must be 'full' or 'tiny', got {self.size!r}")

    # Stacking factor K: AudioMAE patches merged into one token.
    @property
    def stack_factor(self) -> int:
        return 100 // self.token_rate

    @property
    def frame_rate(self) -> float:
        """Token pairs (semantic, acoustic) per second."""
        return self.token_rate / 2

    @property
    def tokens_per_segment(self) -> int:
        return TIME_PATCHES * FREQ_PATCHES // self.stack_factor

    # AudioMAE encoder widths.
    @property
    def mae_dim(self) -> int:
        return 768 if self.size == "full" else 32

    @property
    def mae_depth(self) -> int:
        return 12 if self.size == "full" else 4

    @property
    def mae_heads(self) -> int:
        return 12 if self.size == "full" else 2

    @property
    def mae_mlp_dim(self) -> int:
        return 4 * self.mae_dim

    # The unused MAE decoder that official checkpoints carry (validated, never loaded).
    @property
    def mae_decoder_dim(self) -> int:
        return 512 if self.size == "full" else 16

    @property
    def mae_decoder_depth(self) -> int:
        return 8 if self.size == "full" else 1

    @property
    def feature_dim(self) -> int:
        """D: the width of a pooled token feature (and of centroids and VQ codes)."""
        return self.mae_dim * self.stack_factor

    @property
    def lstm_layers(self) -> int:
        return LSTM_LAYERS[self.token_rate] if self.size == "full" else 1

    @property
    def lstm_hidden(self) -> int:
        return 2 * self.feature_dim

    @property
    def codebook_relpath(self) -> str:
        """Where the k-means table lies, relative to a checkpoint folder (official layout)."""
        return (
            f"codebook_idx/{CODEBOOK_FOLDER[self.token_rate]}/codebook_{self.semantic_vocab_size // 2}_0.npy"
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def num_tokens(num_samples: int, token_rate: int) -> int:
    """Token frames the official code returns for a 16 kHz clip of `num_samples` samples.

    Reproduces its float64 arithmetic on purpose: the duration is padded up by a whole extra 0.16 s
    patch even when it is already a multiple, and rounding can add one more (1.0 s at rate 100 → 57).
    """
    import math

    stack = 100 / token_rate
    duration = num_samples / SAMPLE_RATE
    duration = duration + (PATCH_SECONDS - duration % PATCH_SECONDS)
    return math.ceil(8 * duration / PATCH_SECONDS / stack)


def num_segments(num_samples: int) -> int:
    """10.24 s segments the official code encodes (an exact multiple still gets one extra)."""
    return num_samples // SEGMENT_SAMPLES + 1
