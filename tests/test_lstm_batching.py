"""Every segment gets its official tokens in any batch (`encode_batching="official"`, codec/encoder.py).

The official code encodes one segment at a time. Here a batch of segments from clips of one and of
several segments must give, row for row, every intermediate and token the same segment gets encoded
alone; "batched" (the whole batch through every op) is the option that does not promise that.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from codec import SemantiCodec
from codec.encoder import BatchOneLSTM
from codec.testing.golden_weights import tensor_digest
from pipeline.config import TokenizeConfig
from pipeline.dataset.layout import OutputLayout
from pipeline.tokenize.fingerprint import job_fingerprint
from tests.golden import assert_official, load_npy, reference_digest

NAMES = (
    "audiomae_features",
    "pooled_features",
    "semantic_ids",
    "lstm_input",
    "lstm_output",
    "linear_output",
    "acoustic_ids",
)


@pytest.fixture(scope="module")
def tiny() -> SemantiCodec:
    return SemantiCodec(50, 16384, weights="random:0", size="tiny", device="cpu")


def clip_features(codec: SemantiCodec, seconds: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16000)) / 16000
    noise = 0.05 * torch.randn(len(t), generator=generator)
    wave = 0.3 * torch.sin(2 * math.pi * (120 + 35 * seed) * t) + noise
    segments = codec.split_segments(wave)
    return codec.segment_features(segments.samples, segments.valid_frames)


def mixed_batch(codec: SemantiCodec) -> torch.Tensor:
    """Segments of one-segment clips between those of multi-segment clips, as the encode actor sees them."""
    clips = [(4.0, 0), (25.0, 1), (10.0, 2), (12.0, 3), (0.5, 4)]
    return torch.cat([clip_features(codec, seconds, seed) for seconds, seed in clips])


def assert_rows_alone(codec: SemantiCodec, batch: torch.Tensor) -> None:
    tokens, inter = codec.encoder(batch, intermediates=True)
    for row in range(batch.shape[0]):
        alone_tokens, alone = codec.encoder(batch[row : row + 1], intermediates=True)
        assert torch.equal(tokens[row], alone_tokens[0]), row
        for name in NAMES:
            assert torch.equal(inter[name][row], alone[name][0]), (row, name)
        assert inter["active_tokens"][row] == alone["active_tokens"][0]


def test_every_row_of_a_mixed_batch_gets_its_batch_one_bits(tiny: SemantiCodec) -> None:
    assert tiny.encoder.batching == "official"
    batch = mixed_batch(tiny)
    assert batch.shape[0] == 8  # 1 + 3 + 1 + 2 + 1 segments
    assert_rows_alone(tiny, batch)
    # any split into batches (encode_segments' chunks, the actor's batches) gives the same tokens
    whole = tiny.encoder(batch)
    assert torch.equal(torch.cat([tiny.encoder(batch[i : i + 3]) for i in range(0, 8, 3)]), whole)
    small = SemantiCodec(50, 16384, weights="random:0", size="tiny", device="cpu", max_batch_segments=2)
    samples = torch.randn(5, small.segment_input_samples, generator=torch.Generator().manual_seed(9)) * 0.1
    valid = torch.full((5,), 1024)
    one_by_one = torch.cat([small.encode_segments(samples[i : i + 1], valid[i : i + 1]) for i in range(5)])
    assert torch.equal(small.encode_segments(samples, valid), one_by_one)


def test_batched_option_is_one_plain_call(tiny: SemantiCodec) -> None:
    batch = mixed_batch(tiny)
    encoder = tiny.encoder
    try:
        encoder.batching = "batched"
        _, inter = encoder(batch, intermediates=True)
        with torch.inference_mode():
            plain = encoder.encoder(inter["lstm_input"])[0]
            lone = encoder.encoder(inter["lstm_input"][:1].repeat(2, 1, 1))[0][:1]
        assert torch.equal(inter["lstm_output"], plain)
        _, single = encoder(batch[:1], intermediates=True)
        assert torch.equal(single["lstm_output"], lone)  # a lone row runs as two
    finally:
        encoder.batching = "official"
    if torch.equal(plain[:1], encoder(batch[:1], intermediates=True)[1]["lstm_output"]):
        pytest.skip("this CPU's LSTM rounds one sequence like several: nothing to tell apart here")


def test_the_twin_shares_weights_and_follows_new_weights() -> None:
    lstm = torch.nn.LSTM(24, 24, num_layers=2, batch_first=True, bidirectional=True).eval()
    runner = BatchOneLSTM(lstm)
    rows = torch.randn(3, 6, 24, generator=torch.Generator().manual_seed(1))
    keys = {name: tuple(t.shape) for name, t in lstm.state_dict().items()}
    with torch.inference_mode():
        together = runner(rows)
        alone = torch.cat([lstm(rows[i : i + 1])[0] for i in range(3)])
    assert torch.equal(together, alone)
    assert {name: tuple(t.shape) for name, t in lstm.state_dict().items()} == keys
    twin = runner._twin_module()
    assert twin.weight_ih_l0.shape == (96, 25) and lstm.weight_ih_l0.shape == (96, 24)
    assert lstm.weight_ih_l0.data_ptr() == twin.weight_ih_l0.data_ptr()  # no second copy
    assert twin.weight_hh_l1_reverse is lstm.weight_hh_l1_reverse
    # weights written in place (a load) or replaced (`.to()` and the like): the twin follows
    fresh = torch.nn.LSTM(24, 24, num_layers=2, batch_first=True, bidirectional=True).state_dict()
    lstm.load_state_dict(fresh)
    assert torch.equal(lstm.weight_ih_l0, fresh["weight_ih_l0"])
    assert_twin_matches(runner, lstm, rows)
    lstm.double().float()
    assert_twin_matches(runner, lstm, rows)
    assert runner._twin_module() is not twin
    assert lstm.weight_ih_l0.data_ptr() == runner._twin_module().weight_ih_l0.data_ptr()
    assert torch.equal(lstm.weight_ih_l0, fresh["weight_ih_l0"])


def assert_twin_matches(runner: BatchOneLSTM, lstm: torch.nn.LSTM, rows: torch.Tensor) -> None:
    with torch.inference_mode():
        together = runner(rows)
        alone = torch.cat([lstm(rows[i : i + 1])[0] for i in range(rows.shape[0])])
        twin = runner._twin_forward(rows)
    assert torch.equal(together, alone)
    # the twin itself only where this machine's check found it keeps the bits
    if runner.matches(rows.shape[0], device=rows.device, dtype=rows.dtype):
        assert torch.equal(twin, alone)


def test_rows_run_one_at_a_time_where_the_twin_does_not_keep_the_bits() -> None:
    """Without oneDNN (ATen's own LSTM) batching changes the rounding; the check must notice it or
    prove it harmless, and either way every row keeps its batch-1 bits."""
    lstm = torch.nn.LSTM(32, 32, batch_first=True, bidirectional=True).eval()
    runner = BatchOneLSTM(lstm)
    rows = torch.randn(4, 10, 32, generator=torch.Generator().manual_seed(2))
    with torch.backends.mkldnn.flags(enabled=False), torch.inference_mode():
        together = runner(rows)
        alone = torch.cat([lstm(rows[i : i + 1])[0] for i in range(4)])
        assert torch.equal(together, alone)
        twin_keeps_bits = runner.matches(4, device=rows.device, dtype=rows.dtype)
    with torch.inference_mode():
        assert torch.equal(runner(rows), torch.cat([lstm(rows[i : i + 1])[0] for i in range(4)]))
    assert len(runner._matches) == 2  # one verdict per setting (oneDNN on / off)
    if twin_keeps_bits:
        pytest.skip("ATen's LSTM kept batch-1 bits in the twin here: the fallback was not needed")


def test_autograd_left_on_by_the_caller_changes_nothing() -> None:
    """With autograd recording, oneDNN rounds even a lone sequence otherwise; the official code runs
    under no_grad, so the runner (and its check) always run without autograd."""
    lstm = torch.nn.LSTM(32, 32, num_layers=2, batch_first=True, bidirectional=True).eval()
    runner = BatchOneLSTM(lstm)
    rows = torch.randn(3, 6, 32, generator=torch.Generator().manual_seed(4))
    together = runner(rows)  # grad mode on, parameters require grad
    with torch.no_grad():
        alone = torch.cat([lstm(rows[i : i + 1])[0] for i in range(3)])
    assert torch.equal(together, alone)


def test_the_check_leaves_the_global_generator_alone() -> None:
    lstm = torch.nn.LSTM(16, 16, batch_first=True).eval()
    runner = BatchOneLSTM(lstm)
    state = torch.get_rng_state()
    with torch.inference_mode():
        runner(torch.ones(5, 4, 16))
    assert torch.equal(torch.get_rng_state(), state)


def test_encode_batching_is_part_of_the_identity_only_when_not_official() -> None:
    base = dict(weights="random:0", codec_size="tiny", input="in", output="out")
    default = TokenizeConfig(**base)
    batched = TokenizeConfig(**base, encode_batching="batched")
    assert "encode_batching" not in job_fingerprint(default)
    assert "encode_batching" not in default.codec_spec().options
    assert job_fingerprint(batched)["encode_batching"] == "batched"
    versions = {OutputLayout.for_fingerprint("out", job_fingerprint(c)).version for c in (default, batched)}
    assert len(versions) == 2
    codec = SemantiCodec(50, 16384, weights="random:0", size="tiny", device="cpu", encode_batching="batched")
    assert codec.encoder.batching == "batched"
    replica = codec.fingerprint()
    assert replica["encode_batching"] == "batched"
    assert {k: v for k, v in job_fingerprint(batched).items() if k in replica} == replica
    with pytest.raises(ValueError, match="encode_batching"):
        SemantiCodec(50, 16384, weights="random:0", size="tiny", encode_batching="fast")


@pytest.mark.slow
def test_the_golden_segment_keeps_the_official_bits_inside_a_batch(
    golden_weights, golden_input: torch.Tensor, golden_dir
) -> None:
    """Full size, against the official run itself: its one segment between two others keeps every
    official intermediate bit for bit (digests of tests/data/golden/), BiLSTM output included."""
    codec = SemantiCodec(50, 16384, weights=str(golden_weights), device="cpu")
    segments = codec.split_segments(golden_input)
    golden = codec.segment_features(segments.samples, segments.valid_frames)
    others = clip_features(codec, 15.0, 7)  # two segments of another clip
    batch = torch.cat([others[:1], golden, others[1:]])
    tokens, inter = codec.encoder(batch, intermediates=True)
    for name in ("audiomae_features", "semantic_ids", "lstm_output", "linear_output", "acoustic_ids"):
        assert_official(golden_dir, name, inter[name][1])
    np.testing.assert_array_equal(tokens[1, :252].numpy(), load_npy(golden_dir, "tokens")[0])
    with torch.inference_mode():
        plain = codec.encoder.encoder(inter["lstm_input"])[0]  # the pre-fix batched call
    if tensor_digest(plain[1].numpy()) == reference_digest(golden_dir, "lstm_output"):
        pytest.skip("this CPU's plain batched LSTM keeps the official bits too")
