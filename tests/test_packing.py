"""Packing: no token lost or repeated, document boundaries kept (positions, segment ids), exact
resume from any sequence's cursor, and a collate that pads and masks labels correctly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.training.packing import IGNORE_INDEX, Packer, block_causal_mask, collate, pack_documents

PAD = 99_999


def random_docs(seed: int, n: int, longest: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 5000, size=int(rng.integers(0, longest))).astype(np.uint16) for _ in range(n)]


def pieces_by_document(sequences) -> dict[int, list[np.ndarray]]:
    found: dict[int, list[np.ndarray]] = {}
    for seq in sequences:
        for segment, name in enumerate(seq.documents):
            found.setdefault(name, []).append(seq.input_ids[seq.document_ids == segment])
    return found


@pytest.mark.parametrize("mode", ["fit", "fill"])
@pytest.mark.parametrize("seq_len", [1, 7, 64, 300])
def test_no_token_lost_and_boundaries_kept(mode, seq_len):
    docs = random_docs(seq_len, 80 if seq_len > 7 else 15, 200)
    sequences = list(pack_documents(docs, seq_len=seq_len, mode=mode))
    assert all(1 <= len(s) <= seq_len for s in sequences)
    if mode == "fill":  # only the last sequence may be short
        assert all(len(s) == seq_len for s in sequences[:-1])
    # every document's tokens, in order, exactly once
    pieces = pieces_by_document(sequences)
    for index, doc in enumerate(docs):
        joined = np.concatenate(pieces.get(index, [np.zeros(0, np.uint16)]))
        np.testing.assert_array_equal(joined, doc)
        if mode == "fit" and len(doc) <= seq_len:
            assert len(pieces.get(index, [])) <= 1, "a document that fits is never split"
    assert sum(len(s) for s in sequences) == sum(len(d) for d in docs)
    for seq in sequences:
        # segments are contiguous runs 0, 1, 2…; positions restart at 0 in each
        changes = np.flatnonzero(np.diff(seq.document_ids)) + 1
        starts = np.concatenate([[0], changes])
        assert seq.document_ids[0] == 0 and np.all(np.diff(seq.document_ids) >= 0)
        assert np.all(seq.position_ids[starts] == 0)
        for start, end in zip(starts, np.concatenate([changes, [len(seq)]]), strict=True):
            np.testing.assert_array_equal(seq.position_ids[start:end], np.arange(end - start))


@pytest.mark.parametrize("mode", ["fit", "fill"])
def test_fit_mode_packs_whole_documents(mode):
    docs = [np.arange(n) for n in (3, 4, 2, 10, 1)]
    sequences = list(pack_documents(docs, seq_len=6, mode=mode))
    if mode == "fit":
        # [3] + 4 doesn't fit → close; [4, 2]; 10 > 6 fills the rest then continues; [.., 1]
        assert [len(s) for s in sequences] == [3, 6, 6, 5]
        assert sequences[1].documents == [1, 2]
        assert sequences[2].documents == [3] and sequences[3].documents == [3, 4]
    else:
        assert [len(s) for s in sequences] == [6, 6, 6, 2]


@pytest.mark.parametrize("mode", ["fit", "fill"])
def test_resume_from_any_cursor_reproduces_the_rest(mode):
    docs = random_docs(5, 40, 90)
    full = list(pack_documents(docs, seq_len=50, mode=mode))
    for cut in range(len(full)):
        done, offset = full[cut].cursor
        packer = Packer(50, mode=mode, start=(done, offset))
        rest = []
        for index in range(done, len(docs)):
            rest += packer.add(docs[index], index, offset=offset if index == done else 0)
        rest += packer.finish()
        assert len(rest) == len(full) - cut - 1
        for a, b in zip(rest, full[cut + 1 :], strict=True):
            np.testing.assert_array_equal(a.input_ids, b.input_ids)
            np.testing.assert_array_equal(a.position_ids, b.position_ids)
            assert a.documents == b.documents and a.cursor == b.cursor


def test_collate_pads_and_masks():
    docs = [np.array([1, 2, 3]), np.array([4, 5]), np.array([6, 7, 8, 9])]
    sequences = list(pack_documents(docs, seq_len=6))
    assert [len(s) for s in sequences] == [5, 4]
    batch = collate(sequences, pad_id=PAD, pad_to=6)
    assert batch["input_ids"].dtype == torch.int64
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, PAD], [6, 7, 8, 9, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]]
    assert batch["document_ids"].tolist() == [[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, -1, -1]]
    I = IGNORE_INDEX  # noqa: E741
    assert batch["labels"].tolist() == [[I, 2, 3, I, 5, I], [I, 7, 8, 9, I, I]]
    assert batch["documents"] == [[0, 1], [2]]
    # to the longest sample when no fixed length is given
    assert collate(sequences, pad_id=PAD)["input_ids"].shape == (2, 5)
    with pytest.raises(ValueError):
        collate(sequences, pad_id=PAD, pad_to=4)


def test_block_causal_mask():
    doc = torch.tensor([[0, 0, 1, 1, -1]])
    mask = block_causal_mask(doc)[0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 0, 1],  # padding sees only itself (no empty softmax row)
    ]


def test_packer_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Packer(0)
    with pytest.raises(ValueError):
        Packer(8, mode="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        list(Packer(8).add(np.zeros((2, 2))))
