"""The flat LM vocabulary: exact round trips in both orders and every vocabulary size, strict
rejection of malformed streams, the JSON vocabulary file, and reading the layout of an output."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest

from pipeline.dataset.commit import commit_unit
from pipeline.dataset.layout import OutputLayout
from pipeline.training.token_layout import ACOUSTIC_VOCAB_SIZE, TokenLayout
from tests.helpers import FINGERPRINT

VOCABS = (4096, 8192, 16384, 32768)
ORDERS = ("interleaved", "sequential")


def random_item(rng: np.random.Generator, layout: TokenLayout, n: int) -> tuple[np.ndarray, np.ndarray]:
    semantic = rng.integers(0, layout.semantic_vocab_size, size=n).astype(np.uint16)
    acoustic = rng.integers(0, layout.acoustic_vocab_size, size=n).astype(np.uint16)
    if n >= 2:  # always exercise the extremes of both vocabularies
        semantic[:2] = (0, layout.semantic_vocab_size - 1)
        acoustic[:2] = (layout.acoustic_vocab_size - 1, 0)
    return semantic, acoustic


def test_acoustic_vocabulary_matches_the_codec():
    from codec.config import ACOUSTIC_VOCAB

    assert ACOUSTIC_VOCAB_SIZE == ACOUSTIC_VOCAB
    assert TokenLayout(16384).acoustic_vocab_size == ACOUSTIC_VOCAB


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("vocab", VOCABS)
def test_round_trip_property(order, vocab):
    layout = TokenLayout(vocab, order=order)
    rng = np.random.default_rng(vocab + len(order))
    for trial in range(60):
        n = int(rng.integers(0, 300)) if trial else 0
        semantic, acoustic = random_item(rng, layout, n)
        for framed in (True, False):
            ids = layout.encode(semantic, acoustic, add_bos_eos=framed)
            assert ids.dtype == layout.dtype == np.uint16
            assert len(ids) == layout.n_ids(n, add_bos_eos=framed)
            back_s, back_a = layout.decode(ids, bos_eos=framed)
            np.testing.assert_array_equal(back_s, semantic)
            np.testing.assert_array_equal(back_a, acoustic)
            assert back_s.dtype == back_a.dtype == np.uint16
            # decode's default accepts either framing
            np.testing.assert_array_equal(layout.decode(ids)[0], semantic)


@pytest.mark.parametrize("vocab", VOCABS)
def test_vocabulary_table(vocab):
    layout = TokenLayout(vocab)
    A = ACOUSTIC_VOCAB_SIZE
    assert (layout.bos_id, layout.eos_id, layout.pad_id, layout.sep_id) == (
        vocab + A,
        vocab + A + 1,
        vocab + A + 2,
        vocab + A + 3,
    )
    assert layout.vocab_size == vocab + A + 4
    ids = layout.encode([0, vocab - 1], [0, A - 1])
    assert ids.tolist() == [vocab + A, 0, vocab, vocab - 1, vocab + A - 1, vocab + A + 1]
    seq = TokenLayout(vocab, order="sequential").encode([3, 4], [5, 6], add_bos_eos=False)
    assert seq.tolist() == [3, 4, vocab + A + 3, vocab + 5, vocab + 6]


def test_wide_vocabularies_use_uint32():
    layout = TokenLayout(60000, 8192)
    assert layout.dtype == np.uint32
    ids = layout.encode([59999], [8191])
    assert ids.dtype == np.uint32 and layout.decode(ids)[0].tolist() == [59999]
    # a semantic vocabulary past uint16: decode must not wrap ids (70000 → 4464)
    wide = TokenLayout(70000, 70000)
    semantic, acoustic = wide.decode(wide.encode([69999, 65536, 3], [0, 65536, 69999]))
    assert semantic.tolist() == [69999, 65536, 3] and acoustic.tolist() == [0, 65536, 69999]
    assert semantic.dtype == acoustic.dtype == np.uint32


def test_encode_rejects_bad_streams():
    layout = TokenLayout(4096)
    for semantic, acoustic in (
        ([1, 2], [3]),  # unequal lengths
        ([4096], [0]),  # semantic out of range
        ([0], [8192]),  # acoustic out of range
        ([-1], [0]),
        ([0.5], [1]),  # not integers
        ([[1]], [[1]]),  # not 1-D
    ):
        with pytest.raises(ValueError):
            layout.encode(semantic, acoustic)


@pytest.mark.parametrize("order", ORDERS)
def test_decode_rejects_malformed_streams(order):
    layout = TokenLayout(4096, order=order)
    S, A = 4096, ACOUSTIC_VOCAB_SIZE
    good = layout.encode([1, 2, 3], [4, 5, 6]).astype(np.int64)
    bad = [
        good[:-1],  # BOS without EOS
        good[1:],  # EOS without BOS
        np.concatenate([good[:2], [layout.pad_id], good[2:]]),  # PAD inside
        np.concatenate([good[:2], [layout.bos_id], good[2:]]),  # BOS inside
        np.concatenate([good[:-1], [layout.vocab_size], good[-1:]]),  # outside the vocabulary
        np.concatenate([good[:-1], [-1], good[-1:]]),
        np.array([0.0, 1.0]),  # not integers
        good.reshape(1, -1),  # not 1-D
    ]
    if order == "interleaved":
        swapped = good.copy()
        swapped[1], swapped[2] = swapped[2], swapped[1]  # acoustic in a semantic slot
        bad += [
            swapped,
            np.concatenate([good[:-1], [7], good[-1:]]),  # odd length
            np.concatenate([good[:3], [layout.sep_id, S + 1], good[3:]]),  # SEP in interleaved
        ]
    else:
        bad += [
            good[good != layout.sep_id],  # no SEP
            np.concatenate([good[:-1], [layout.sep_id], good[-1:]]),  # two SEPs
            np.array([layout.bos_id, 1, 2, layout.sep_id, S + 1, layout.eos_id]),  # unequal halves
            np.array([layout.bos_id, S + 1, layout.sep_id, 1, layout.eos_id]),  # halves swapped
        ]
    for ids in bad:
        with pytest.raises(ValueError):
            layout.decode(ids)
    with pytest.raises(ValueError):
        layout.decode(good, bos_eos=False)
    with pytest.raises(ValueError):
        layout.decode(good[1:-1], bos_eos=True)
    assert S + A < layout.vocab_size


def test_json_vocabulary_file_round_trips_and_refuses_foreign_files():
    for vocab in VOCABS:
        for order in ORDERS:
            layout = TokenLayout(vocab, order=order)
            text = layout.to_json()
            assert TokenLayout.from_json(text) == layout
            assert TokenLayout.from_dict(json.loads(text)) == layout
            data = json.loads(text)
            assert data["special_tokens"] == {
                "bos": layout.bos_id,
                "eos": layout.eos_id,
                "pad": layout.pad_id,
                "sep": layout.sep_id,
            }
            assert data["ranges"] == {"semantic": [0, vocab], "acoustic": [vocab, vocab + 8192]}
    data = TokenLayout(16384).to_dict()
    for key, value in (("vocab_size", 1), ("special_tokens", {"bos": 0}), ("format", "other")):
        with pytest.raises(ValueError):
            TokenLayout.from_dict({**data, key: value})
    with pytest.raises(ValueError):
        TokenLayout.from_json("{not json")
    with pytest.raises(ValueError):
        TokenLayout(16384, order="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TokenLayout(0)


def _commit(root: str, fingerprint: dict, unit: str = "u0") -> OutputLayout:
    fs = fsspec.filesystem("file")
    layout = OutputLayout.for_fingerprint(root, fingerprint)
    rows = [
        {
            "id": f"{unit}-a",
            "semantic_tokens": [1, 2],
            "acoustic_tokens": [3, 4],
            "n_frames": 2,
            "duration_s": 0.08,
            "source_uri": "x.wav",
            "metadata": {},
        }
    ]
    commit_unit(fs, layout, unit, token_rows=rows, fingerprint=fingerprint)
    return layout


def test_for_output_reads_the_fingerprint(tmp_path):
    root = str(tmp_path / "out")
    small = {**FINGERPRINT, "semantic_vocab_size": 8192, "acoustic_vocab_size": 8192}
    layout = _commit(root, small)
    assert TokenLayout.for_output(root) == TokenLayout(8192)
    sequential = TokenLayout.for_output(layout.version_url, order="sequential")
    assert sequential == TokenLayout(8192, order="sequential")
    other = _commit(root, {**FINGERPRINT, "acoustic_vocab_size": 8192})
    with pytest.raises(ValueError, match="version"):
        TokenLayout.for_output(root)
    assert TokenLayout.for_output(root, version=other.version) == TokenLayout(16384)
    with pytest.raises(FileNotFoundError):
        TokenLayout.for_output(root, version="nope")
    with pytest.raises(FileNotFoundError):
        TokenLayout.for_output(str(tmp_path / "empty"))
