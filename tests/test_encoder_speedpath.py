"""The encoder's batching modes against the reference forward (every op once over the whole batch).

"official" (default): every row of a batch is bit-identical, token and intermediate, to the reference
forward of that row alone: the official code encodes one segment at a time. "batched": the reference
forward of the whole batch; a lone segment's BiLSTM gets the bits it gets inside a batch (oneDNN's
float32 LSTM rounds one sequence differently from several on the CPU, see codec/encoder.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from codec import SemantiCodec
from codec.encoder import active_token_counts, pool_patches

NAMES = (
    "audiomae_features",
    "pooled_features",
    "lstm_input",
    "lstm_output",
    "linear_output",
    "semantic_ids",
    "acoustic_ids",
)


@torch.inference_mode()
def reference_forward(encoder, fbank: torch.Tensor):
    """The forward pass as it was before the speed path: one plain `nn.LSTM` call on the batch."""
    config = encoder.config
    active = active_token_counts(fbank, config.tokens_per_segment)
    patches = encoder.audiomae(fbank.to(encoder.compute_dtype))
    pooled = pool_patches(patches, config.stack_factor).float()
    semantic = encoder.semantic_quantizer(pooled)
    lstm_input = torch.cat([pooled, encoder.semantic_quantizer.lookup(semantic)], dim=-1)
    for index, count in enumerate(active):
        lstm_input[index, count:] = -1.0
    lstm_output, _ = encoder.encoder(lstm_input.to(encoder.compute_dtype))
    residual = encoder.encoder_output_linear(lstm_output)
    acoustic = encoder.quantizer(residual)
    tokens = torch.stack([semantic, acoustic], dim=-1)
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


def features(codec: SemantiCodec, seconds: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    n = int(seconds * 16000)
    t = torch.arange(n) / 16000
    wave = 0.3 * torch.sin(2 * math.pi * (150 + 40 * seed) * t) + 0.05 * torch.randn(n, generator=generator)
    segments = codec.split_segments(wave)  # the last segment is partly padding
    return codec.segment_features(segments.samples, segments.valid_frames)


def assert_same(ours, expected, rows: slice | None = None) -> None:
    tokens, inter = ours
    ref_tokens, ref_inter = expected
    rows = rows or slice(None)
    assert torch.equal(tokens, ref_tokens[rows])
    for name in NAMES:
        assert torch.equal(inter[name], ref_inter[name][rows]), name
    assert inter["active_tokens"] == ref_inter["active_tokens"][rows]


def check_speed_path(codec: SemantiCodec, fbank: torch.Tensor) -> None:
    encoder = codec.encoder
    single, batch = fbank[:1], fbank
    try:
        assert encoder.batching == "official"  # default: each row as the reference alone
        assert_same(encoder(single, intermediates=True), reference_forward(encoder, single))
        ours = encoder(batch, intermediates=True)
        for row in range(len(fbank)):
            rows = slice(row, row + 1)
            alone = reference_forward(encoder, fbank[rows])
            assert_same((ours[0][rows], {k: v[rows] for k, v in ours[1].items()}), alone)
        encoder.batching = "batched"
        batched_reference = reference_forward(encoder, batch)
        # batched: one plain call; alone: the bits the segment gets inside the batch
        assert_same(encoder(batch, intermediates=True), batched_reference)
        assert_same(encoder(single, intermediates=True), batched_reference, slice(0, 1))
        last = fbank[-1:]
        assert_same(encoder(last, intermediates=True), batched_reference, slice(len(fbank) - 1, None))
    finally:
        encoder.batching = "official"


def test_tiny_speed_path_is_bit_identical() -> None:
    codec = SemantiCodec(50, 16384, weights="random:0", size="tiny", device="cpu")
    for seed, seconds in ((0, 25.0), (1, 12.5)):
        check_speed_path(codec, features(codec, seconds, seed))


def test_default_encoder_is_the_reference_through_encode_segments() -> None:
    codec = SemantiCodec(25, 4096, weights="random:3", size="tiny", device="cpu", max_batch_segments=2)
    wave_features = features(codec, 33.0, 2)
    tokens = torch.cat([codec.encoder(wave_features[i : i + 2]) for i in range(0, len(wave_features), 2)])
    expected = torch.cat(
        [reference_forward(codec.encoder, wave_features[i : i + 1])[0] for i in range(len(wave_features))]
    )
    assert torch.equal(tokens, expected)


@pytest.mark.slow
def test_full_size_speed_path_is_bit_identical() -> None:
    codec = SemantiCodec(50, 16384, weights="random:0", size="full", device="cpu")
    fbank = features(codec, 12.0, 5)  # two segments, the second mostly padding
    check_speed_path(codec, fbank)


def test_float32_encoder_turns_cudnn_tf32_off_on_gpus_only_and_restores_it() -> None:
    """On an H200, cuDNN's default TF32 convolutions moved 0.4 % of acoustic tokens off the CPU's."""
    from codec.encoder import exact_float32_convolutions

    cudnn = torch.backends.cudnn
    saved = cudnn.allow_tf32
    try:
        cudnn.allow_tf32 = True
        with exact_float32_convolutions(torch.device("cuda"), torch.float32):
            assert cudnn.allow_tf32 is False
        assert cudnn.allow_tf32 is True
        for device, dtype in ((torch.device("cuda"), torch.bfloat16), (torch.device("cpu"), torch.float32)):
            with exact_float32_convolutions(device, dtype):
                assert cudnn.allow_tf32 is True  # reduced precision or no cuDNN: left as the caller set it
        with pytest.raises(RuntimeError), exact_float32_convolutions(torch.device("cuda"), torch.float32):
            raise RuntimeError("an encode that fails")
        assert cudnn.allow_tf32 is True
    finally:
        cudnn.allow_tf32 = saved
