"""SemantiCodec behaviour on the tiny architecture: batching, lengths, inputs, loading."""

from __future__ import annotations

import math
from pathlib import Path

import fsspec
import numpy as np
import pytest
import soundfile
import torch

from codec import CheckpointError, Codec, DecoderLoadError, SemantiCodec, num_tokens, to_codec_input
from codec.decoder import decoded_length, unused_decoder_keys
from codec.resample import resample
from tests.helpers import record_checkpoint_reads
from tests.tiny_checkpoint import write_checkpoint_folder


@pytest.fixture(scope="module")
def tiny() -> SemantiCodec:
    return SemantiCodec(50, 16384, weights="random:0", size="tiny", device="cpu")


def _noise(seconds: float, seed: int, rate: int = 16000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    n = int(round(seconds * rate))
    t = torch.arange(n) / rate
    return (
        0.3 * torch.sin(2 * math.pi * (200 + 50 * seed) * t) + 0.05 * torch.randn(n, generator=generator)
    ).float()


def test_implements_codec_interface(tiny: SemantiCodec) -> None:
    assert isinstance(tiny, Codec)
    assert tiny.vocab_sizes == (16384, 8192) and tiny.frame_rate == 25.0
    fingerprint = tiny.fingerprint()
    assert fingerprint["weights"] == "random:0" and fingerprint["random_weights"] is True
    assert fingerprint["token_rate"] == 50 and fingerprint["weights_digest"]


@pytest.mark.parametrize(
    ("seconds", "rate", "expected"),
    [
        (10.0, 100, 504),
        (10.0, 50, 252),
        (10.0, 25, 126),
        (10.24, 100, 520),
        (10.24, 50, 260),
        (10.24, 25, 130),
        (1.0, 100, 57),
    ],
)
def test_token_counts_follow_official_arithmetic(seconds, rate, expected) -> None:
    assert num_tokens(int(round(seconds * 16000)), rate) == expected


@pytest.mark.parametrize("seconds", [0.05, 10.24, 10.25, 20.48, 200.0])
def test_token_lengths_for_awkward_durations(tiny: SemantiCodec, seconds: float) -> None:
    wave = _noise(seconds, seed=1)
    tokens = tiny.encode(wave)
    assert tokens.shape == (1, num_tokens(len(wave), 50), 2)
    segments = tiny.split_segments(wave)
    assert segments.samples.shape[0] == len(wave) // 163840 + 1  # exact multiples get one more
    assert tokens.min() >= 0
    assert int(tokens[..., 0].max()) < 16384 and int(tokens[..., 1].max()) < 8192


def test_batch_equals_single_encodes(tiny: SemantiCodec) -> None:
    clips = [_noise(s, seed=i) for i, s in enumerate([0.05, 3.3, 10.24, 12.0, 25.0])]
    lengths = torch.tensor([len(c) for c in clips])
    padded = torch.zeros(len(clips), int(lengths.max()))
    for i, clip in enumerate(clips):
        padded[i, : len(clip)] = clip
    tokens, token_lengths = tiny.encode_batch(padded, lengths)
    for i, clip in enumerate(clips):
        single = tiny.encode(clip)[0]
        assert int(token_lengths[i]) == single.shape[0]
        torch.testing.assert_close(tokens[i, : single.shape[0]], single, rtol=0, atol=0)
        assert (tokens[i, single.shape[0] :] == -1).all()


def test_segments_encoded_anywhere_join_to_whole_clip(tiny: SemantiCodec) -> None:
    clip = _noise(23.0, seed=4)
    segments = tiny.split_segments(clip)
    pieces = [
        tiny.encode_segments(segments.samples[i : i + 1], segments.valid_frames[i : i + 1])
        for i in range(segments.samples.shape[0])
    ]
    joined = tiny.join_segment_tokens(torch.cat(pieces), segments.num_tokens)
    torch.testing.assert_close(joined, tiny.encode(clip)[0], rtol=0, atol=0)


@pytest.mark.parametrize(("rate", "channels"), [(16000, 2), (44100, 2), (48000, 1), (48000, 6)])
def test_file_input_resamples_then_keeps_channel_0(tiny, tmp_path: Path, rate, channels) -> None:
    data = np.stack([_noise(2.5, seed=c, rate=rate).numpy() for c in range(channels)], axis=1)
    path = tmp_path / f"clip_{rate}_{channels}.wav"
    soundfile.write(path, data, rate, subtype="FLOAT")
    expected_wave = resample(torch.from_numpy(data.T.copy()), rate, 16000)[0]
    tokens = tiny.encode(str(path))
    torch.testing.assert_close(tokens, tiny.encode(expected_wave), rtol=0, atol=0)
    assert tokens.shape[1] == num_tokens(math.ceil(len(data) * 16000 / rate), 50)


def test_bfloat16_replica_mostly_agrees(tiny: SemantiCodec) -> None:
    low = SemantiCodec(50, 16384, weights="random:0", size="tiny", device="cpu", dtype="bfloat16")
    clip = _noise(12.0, seed=7)
    reference, lowered = tiny.encode(clip), low.encode(clip)
    assert lowered.shape == reference.shape
    # Tokens of random weights are fragile; bf16 must still agree far above chance.
    assert (lowered[..., 0] == reference[..., 0]).float().mean() > 0.5


def test_folder_weights_load_and_match_their_source(tmp_path: Path) -> None:
    source = write_checkpoint_folder(tmp_path / "ckpt", token_rate=25, vocab=8192)
    loaded = SemantiCodec(25, 8192, weights=str(tmp_path / "ckpt"), size="tiny", device="cpu")
    clip = _noise(11.0, seed=2)
    torch.testing.assert_close(loaded.encode(clip), source.encode(clip), rtol=0, atol=0)
    assert loaded.fingerprint()["random_weights"] is False
    assert len(loaded.fingerprint()["weights_digest"]) == 33


def test_hub_layout_root_is_accepted(tmp_path: Path) -> None:
    write_checkpoint_folder(tmp_path / "hub" / "semanticodec_tokenrate_50", token_rate=50)
    # the hub keeps codebook_idx/ at the top, beside the per-rate folders
    (tmp_path / "hub" / "semanticodec_tokenrate_50" / "codebook_idx").rename(
        tmp_path / "hub" / "codebook_idx"
    )
    codec = SemantiCodec(50, 4096, weights=str(tmp_path / "hub"), size="tiny", device="cpu")
    assert codec.encode(_noise(1.0, seed=0)).shape == (1, num_tokens(16000, 50), 2)


def test_fsspec_url_source_is_fetched_once_into_cache(tmp_path: Path) -> None:
    source = write_checkpoint_folder(tmp_path / "ckpt", token_rate=50)
    fs = fsspec.filesystem("memory")
    fs.put(str(tmp_path / "ckpt"), "/bucket/semanticodec", recursive=True)
    cache = tmp_path / "cache"
    codec = SemantiCodec(
        50, 4096, weights="memory://bucket/semanticodec", size="tiny", device="cpu", cache_dir=cache
    )
    clip = _noise(3.0, seed=5)
    torch.testing.assert_close(codec.encode(clip), source.encode(clip), rtol=0, atol=0)
    cached = sorted(p.name for p in cache.rglob("*.ckpt"))
    assert cached == ["encoder.ckpt"]
    mtime = next(cache.rglob("encoder.ckpt")).stat().st_mtime_ns
    SemantiCodec(50, 4096, weights="memory://bucket/semanticodec", size="tiny", device="cpu", cache_dir=cache)
    assert next(cache.rglob("encoder.ckpt")).stat().st_mtime_ns == mtime  # not fetched again


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        (lambda s: s.pop("encoder_output_linear.weight"), "encoder_output_linear.weight"),
        (lambda s: s.__setitem__("encoder.extra_bias", torch.zeros(3)), "encoder.extra_bias"),
        (lambda s: s.__setitem__("audiomae.model.norm.weight", torch.ones(7)), "audiomae.model.norm.weight"),
        (lambda s: s.pop("audiomae.model.decoder_pred.bias"), "audiomae.model.decoder_pred.bias"),
    ],
)
def test_tampered_checkpoint_is_rejected_naming_the_key(tmp_path: Path, tamper, named) -> None:
    write_checkpoint_folder(tmp_path, token_rate=50)
    state = torch.load(tmp_path / "encoder.ckpt", weights_only=True)
    tamper(state)
    torch.save(state, tmp_path / "encoder.ckpt")
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        SemantiCodec(50, 4096, weights=str(tmp_path), size="tiny", device="cpu")


def test_pickled_code_in_checkpoint_is_never_run(tmp_path: Path) -> None:
    write_checkpoint_folder(tmp_path, token_rate=50)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    state = torch.load(tmp_path / "encoder.ckpt", weights_only=True)
    state["evil"] = Evil()
    torch.save(state, tmp_path / "encoder.ckpt")
    with pytest.raises(Exception):  # noqa: B017 - any refusal is fine, running it is not
        SemantiCodec(50, 4096, weights=str(tmp_path), size="tiny", device="cpu")
    assert not marker.exists()


def test_wrong_codebook_shape_and_missing_files_are_clear(tmp_path: Path) -> None:
    codec = write_checkpoint_folder(tmp_path, token_rate=50)
    np.save(tmp_path / codec.config.codebook_relpath, np.zeros((4096, 5), dtype=np.float32))
    with pytest.raises(CheckpointError, match="k-means table"):
        SemantiCodec(50, 4096, weights=str(tmp_path), size="tiny", device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SemantiCodec(50, 4096, weights=str(tmp_path / "nowhere"), size="tiny", device="cpu")
    (tmp_path / "encoder.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="no encoder file"):
        SemantiCodec(50, 4096, weights=str(tmp_path), size="tiny", device="cpu")


def test_random_weights_are_never_implicit() -> None:
    with pytest.raises(ValueError, match="random:SEED"):
        SemantiCodec(50, 4096, size="tiny")
    a = SemantiCodec(50, 4096, weights="random:11", size="tiny", device="cpu")
    b = SemantiCodec(50, 4096, weights="random:11", size="tiny", device="cpu")
    clip = _noise(2.0, seed=3)
    torch.testing.assert_close(a.encode(clip), b.encode(clip), rtol=0, atol=0)


def test_spec_builds_replicas_fingerprints_and_segmenters_alike(tmp_path: Path) -> None:
    from codec import CodecSpec, build_codec, build_segmenter, describe_codec

    write_checkpoint_folder(tmp_path, token_rate=100, vocab=4096)
    spec = CodecSpec(
        "semanticodec",
        {"token_rate": 100, "semantic_vocab_size": 4096, "weights": str(tmp_path), "size": "tiny"},
    )
    codec = build_codec(spec, device="cpu")
    assert describe_codec(spec) == codec.fingerprint()
    clip = _noise(12.5, seed=9)
    segments = build_segmenter(spec)(clip)
    tokens = codec.encode_segments(segments.samples, segments.valid_frames)
    torch.testing.assert_close(
        codec.join_segment_tokens(tokens, segments.num_tokens), codec.encode(clip)[0], rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="unknown SemantiCodec option"):
        describe_codec(CodecSpec("semanticodec", {"tokenrate": 50}))
    with pytest.raises(ValueError, match="unknown codec"):
        build_codec(CodecSpec("encodec", {}))


def test_s3_weights_through_standard_aws_variables(tmp_path: Path, s3_server, aws_env) -> None:
    source = write_checkpoint_folder(tmp_path / "ckpt", token_rate=50)
    bucket = s3_server.make_bucket("semtok-weights")
    s3_server.filesystem().put(str(tmp_path / "ckpt") + "/", f"{bucket}/semanticodec/", recursive=True)
    codec = SemantiCodec(
        50, 4096, weights=f"{bucket}/semanticodec", size="tiny", device="cpu", cache_dir=tmp_path / "cache"
    )
    clip = _noise(4.0, seed=8)
    torch.testing.assert_close(codec.encode(clip), source.encode(clip), rtol=0, atol=0)
    assert codec.fingerprint()["weights"] == f"{bucket}/semanticodec"


# -- the official API: decode without naming components ----------------------------------------------------
def _write_decoder_file(folder: Path, seed: int, vocab: int = 4096) -> SemantiCodec:
    """decoder.ckpt of `random:seed` beside an encoder folder; returns the codec it came from."""
    source = SemantiCodec(
        50, vocab, weights=f"random:{seed}", size="tiny", device="cpu", components=("encoder", "decoder")
    )
    state = dict(source.decoder.state_dict())
    generator = torch.Generator().manual_seed(seed)
    for name, shape in unused_decoder_keys(source.decoder).items():
        state[name] = torch.randn(shape, generator=generator)
    torch.save(state, folder / "decoder.ckpt")
    return source


@pytest.mark.slow
def test_official_readme_example_runs_as_written(tmp_path: Path) -> None:
    """The seed README's three lines, given a weights folder in the official layout (tiny sizes)."""
    weights = tmp_path / "weights"
    weights.mkdir()
    write_checkpoint_folder(weights, token_rate=50, vocab=16384, seed=4)
    _write_decoder_file(weights, seed=4, vocab=16384)
    wav_path = tmp_path / "a.wav"
    soundfile.write(wav_path, _noise(0.5, seed=1, rate=22050).numpy(), 22050)
    codec = SemantiCodec(token_rate=50, semantic_vocab_size=16384, weights=str(weights), size="tiny")
    tokens = codec.encode(wav_path)
    wave = codec.decode(tokens)
    assert tokens.shape == (1, num_tokens(math.ceil(0.5 * 16000), 50), 2)
    assert wave.shape == (1, 1, decoded_length(tokens.shape[1], 50)) and wave.dtype == np.float32
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0


def test_decoder_is_loaded_on_first_decode_only(tmp_path: Path, monkeypatch) -> None:
    write_checkpoint_folder(tmp_path, token_rate=50, vocab=4096, seed=3)
    source = _write_decoder_file(tmp_path, seed=3)
    opened = record_checkpoint_reads(monkeypatch)
    codec = SemantiCodec(50, 4096, weights=str(tmp_path), size="tiny", device="cpu")
    tokens = codec.encode(_noise(1.0, seed=2))
    assert codec.decoder is None and opened == ["encoder.ckpt"]  # encode-only use: never opened
    wave = codec.decode(tokens, seed=5, steps=2)
    assert opened == ["encoder.ckpt", "decoder.ckpt"] and codec.components == ("encoder", "decoder")
    np.testing.assert_array_equal(wave, source.decode(tokens, seed=5, steps=2))
    codec.decode_batch(tokens, steps=2, seed=0)
    assert opened.count("decoder.ckpt") == 1  # loaded once
    # without a seed: torch's global generator, as the official decode
    torch.manual_seed(7)
    unseeded = codec.decode(tokens, steps=2)
    np.testing.assert_array_equal(unseeded, codec.decode(tokens, seed=7, steps=2))


def test_encode_only_and_missing_decoder_are_clear(tmp_path: Path) -> None:
    write_checkpoint_folder(tmp_path, token_rate=50, vocab=4096, seed=3)
    tokens = torch.zeros(1, 4, 2, dtype=torch.int64)
    lazy = SemantiCodec(50, 4096, weights=str(tmp_path), size="tiny", device="cpu")
    with pytest.raises(DecoderLoadError, match="no decoder file"):
        lazy.decode(tokens, steps=2)
    strict = SemantiCodec(50, 4096, weights=str(tmp_path), size="tiny", device="cpu", components=("encoder",))
    _write_decoder_file(tmp_path, seed=3)
    with pytest.raises(RuntimeError, match="without the decoder"):
        strict.decode_batch(tokens, steps=2)
    assert strict.decoder is None
    assert lazy.decode(tokens, steps=2, seed=0).shape == (1, 1, decoded_length(4, 50))  # file now there


def test_to_codec_input_resamples_all_channels_then_keeps_channel_0() -> None:
    frames = np.stack([_noise(0.4, seed=c, rate=44100).numpy() for c in range(3)], axis=1)
    expected = resample(torch.from_numpy(np.ascontiguousarray(frames.T)), 44100, 16000)[0].numpy()
    out = to_codec_input(frames, 44100)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"] and out.flags["OWNDATA"]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(to_codec_input(frames[:, 0], 16000), frames[:, 0])
    assert len(to_codec_input(frames, 44100)) == math.ceil(len(frames) * 16000 / 44100)
