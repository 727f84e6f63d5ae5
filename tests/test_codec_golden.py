"""Full-size parity with the official code on the reproducible random weights (tests/data/golden/)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from codec import SemantiCodec, SemantiCodecConfig
from codec.encoder import SemantiCodecEncoder
from codec.testing.golden_weights import read_json
from tests.golden import MANIFEST, load_npy, official_intermediate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def official_codec(golden_weights) -> SemantiCodec:
    return SemantiCodec(50, 16384, weights=str(golden_weights), device="cpu")


@pytest.fixture(scope="module")
def run(official_codec: SemantiCodec, golden_input: torch.Tensor):
    segments = official_codec.split_segments(golden_input)
    features = official_codec.segment_features(segments.samples, segments.valid_frames)
    tokens, intermediates = official_codec.encoder(features, intermediates=True)
    return features, tokens, intermediates


def test_tokens_identical_through_seed_api(official_codec: SemantiCodec, golden_dir) -> None:
    tokens = official_codec.encode(str(golden_dir / "input_a.wav"))
    expected = load_npy(golden_dir, "tokens")
    assert tokens.dtype == torch.int64
    assert tokens.shape == expected.shape == (1, 252, 2)
    np.testing.assert_array_equal(tokens.numpy(), expected)


@pytest.mark.parametrize(
    "name", ["audiomae_features", "pooled_features", "lstm_input", "lstm_output", "linear_output"]
)
def test_intermediates_within_1e_4_relative(run, golden_dir, golden_weights, name: str) -> None:
    _, _, intermediates = run
    ours = intermediates[name][0].numpy()
    # pooled features and the LSTM input are rebuilt exactly from stored arrays (digest-checked);
    # lstm_output is stored for a subset of rows (linear_output, a projection of it, is full)
    expected, rows = official_intermediate(golden_dir, name, golden_weights)
    if rows is not None:
        assert ours.shape[0] == 256
        ours = ours[rows]
    assert ours.shape == expected.shape
    scale = np.abs(expected).max()
    assert np.abs(ours - expected).max() <= 1e-4 * scale


def test_fbank_and_ids_identical(run, golden_dir) -> None:
    features, _, intermediates = run
    np.testing.assert_allclose(features[0].numpy(), load_npy(golden_dir, "fbank"), atol=1e-4)
    np.testing.assert_array_equal(
        intermediates["semantic_ids"][0].numpy(), load_npy(golden_dir, "semantic_ids")
    )
    np.testing.assert_array_equal(
        intermediates["acoustic_ids"][0].numpy(), load_npy(golden_dir, "acoustic_ids")
    )
    assert intermediates["active_tokens"] == [250]  # rows 250–255 are padding (README §2)


def _manifest_shapes(file: str) -> dict[str, tuple[int, ...]]:
    manifest = read_json(MANIFEST)
    return {entry["name"]: tuple(entry["shape"]) for entry in manifest["files"][file]}


def test_state_dict_layout_equals_official_rate50() -> None:
    from codec.semanticodec import _encoder_ignored_keys

    config = SemantiCodecConfig(50, 16384)
    with torch.device("meta"):
        encoder = SemantiCodecEncoder(config, torch.empty(16384, 1536))
    ours = {name: tuple(t.shape) for name, t in encoder.state_dict().items()}
    ours.update(_encoder_ignored_keys(config))
    assert ours == _manifest_shapes("encoder.ckpt")


# Parameter counts (millions) per sub-module from spec §6, for rates 100 / 50 / 25.
SPEC_COUNTS = {
    100: {"lstm": 207.7, "linear": 2.36},
    50: {"lstm": 604.1, "linear": 9.44},
    25: {"lstm": 1510.1, "linear": 37.75},
}


@pytest.mark.parametrize("rate", [100, 50, 25])
def test_parameter_counts_match_spec(rate: int) -> None:
    config = SemantiCodecConfig(rate, 4096)
    with torch.device("meta"):
        encoder = SemantiCodecEncoder(config, torch.empty(4096, config.feature_dim))

    def millions(module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6

    assert math.isclose(millions(encoder.encoder), SPEC_COUNTS[rate]["lstm"], abs_tol=0.05)
    assert math.isclose(millions(encoder.encoder_output_linear), SPEC_COUNTS[rate]["linear"], abs_tol=0.01)
    # AudioMAE encoder part incl. the position table: 85.65 M for every rate.
    assert math.isclose(millions(encoder.audiomae), 85.65, abs_tol=0.01)
    assert tuple(encoder.quantizer._codebook.embed.shape) == (1, 8192, config.feature_dim)
