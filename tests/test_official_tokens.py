"""The pipeline gives the tokens of `SemantiCodec.encode(path)` (the official reader and resampler)
for every sample rate and channel layout: tiny codec here, full-size golden weights when marked slow.
soxr stays an explicit option with a dataset version of its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from codec import SemantiCodec
from pipeline.config import TokenizeConfig
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.manifest import load_tokens
from pipeline.io.storage import open_filesystem
from pipeline.tokenize.fingerprint import job_fingerprint
from pipeline.tokenize.job import run_tokenize
from tests.corpus import speech_like
from tests.helpers import TINY_CODEC

RATES = (8000, 22050, 44100, 48000, 96000)


def _write_corpus(root: Path, seconds: float) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for rate in RATES:
        for channels in (1, 2):
            left = speech_like(seconds, rate, seed=rate)
            audio = left if channels == 1 else np.stack([left, speech_like(seconds, rate, seed=rate + 1)], 1)
            path = root / f"sr{rate}_ch{channels}.flac"
            soundfile.write(path, audio, rate, subtype="PCM_24")
            paths.append(path)
    return paths


def _pipeline_tokens(config: TokenizeConfig) -> dict[str, np.ndarray]:
    run_tokenize(config)
    fs, _ = open_filesystem(config.output)
    layout = OutputLayout.for_fingerprint(config.output, job_fingerprint(config))
    rows = load_tokens(fs, layout).to_pylist()
    return {r["id"]: np.stack([r["semantic_tokens"], r["acoustic_tokens"]], axis=1) for r in rows}


def _assert_equal_to_direct(tokens: dict[str, np.ndarray], codec: SemantiCodec, paths: list[Path]) -> None:
    assert set(tokens) == {p.name for p in paths}
    for path in paths:
        direct = codec.encode(path)[0].cpu().numpy()
        np.testing.assert_array_equal(tokens[path.name], direct, err_msg=path.name)


def test_pipeline_tokens_equal_encode_path_at_every_rate_and_layout(ray_local, tmp_path: Path) -> None:
    paths = _write_corpus(tmp_path / "in", seconds=11.0)  # two segments each
    config = TokenizeConfig(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        files_per_unit=4,
        progress_interval_s=60,
        **TINY_CODEC,
    )
    tokens = _pipeline_tokens(config)
    codec = SemantiCodec(50, 16384, weights="random:0", size="tiny", device="cpu")
    _assert_equal_to_direct(tokens, codec, paths)

    # soxr: an explicit option, a version of its own, and other tokens for non-16 kHz files.
    soxr = TokenizeConfig(**{**config.to_dict(redact=False), "resampler": "soxr-hq"})
    assert job_fingerprint(soxr)["resampler"] == "soxr-hq"
    soxr_layout = OutputLayout.for_fingerprint(soxr.output, job_fingerprint(soxr))
    assert soxr_layout.version != OutputLayout.for_fingerprint(config.output, job_fingerprint(config)).version
    other = _pipeline_tokens(soxr)
    assert any(not np.array_equal(other[name], tokens[name]) for name in tokens)


# One-segment items (most speech corpora) among longer ones: the encode actor batches their segments
# together, while the official code runs every segment's BiLSTM alone (see codec/encoder.py).
MIXED_SECONDS = (2.0, 10.0, 23.0, 6.5, 11.0, 10.24, 0.3)  # 1, 1, 3, 1, 2, 2, 1 segments


def _write_mixed(root: Path, seconds: tuple[float, ...], seed: int = 0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, length in enumerate(seconds):
        path = root / f"clip{index}.wav"
        soundfile.write(path, speech_like(length, 16000, seed=seed + index), 16000, subtype="FLOAT")
        paths.append(path)
    return paths


def test_single_segment_items_batched_with_longer_ones_get_the_encode_path_tokens(
    ray_local, tmp_path: Path
) -> None:
    paths = _write_mixed(tmp_path / "in", MIXED_SECONDS)
    config = TokenizeConfig(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        files_per_unit=len(paths),
        encode_batch_segments=8,
        progress_interval_s=60,
        **TINY_CODEC,
    )
    tokens = _pipeline_tokens(config)
    codec = SemantiCodec(50, 16384, weights="random:0", size="tiny", device="cpu")
    _assert_equal_to_direct(tokens, codec, paths)


@pytest.mark.slow
def test_pipeline_tokens_equal_encode_path_with_full_size_golden_weights(
    ray_local, tmp_path: Path, golden_weights: Path
) -> None:
    paths = _write_corpus(tmp_path / "in", seconds=1.0)
    config = TokenizeConfig(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        weights=str(golden_weights),
        files_per_unit=10,
        progress_interval_s=60,
        encode_batch_segments=10,
    )
    tokens = _pipeline_tokens(config)
    codec = SemantiCodec(50, 16384, weights=str(golden_weights), device="cpu")
    _assert_equal_to_direct(tokens, codec, paths)
