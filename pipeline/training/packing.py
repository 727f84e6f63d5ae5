"""Packing flat token documents into fixed-length training sequences, keeping document boundaries.

Why by hand: packers in training libraries (HF `DataCollatorWithFlattening`, torchtune's
`PackedDataset`) either need the whole dataset in memory or lose the exact resume point inside a
stream; this one is a streaming greedy packer whose state after every sequence is a cursor
(items done, tokens of the next item done), so a loader resumes packing exactly.

Rules (`seq_len` = L):
- `mode="fit"` (default): a document that fits in L tokens is never split; it goes into the
  current sequence when it fits in the free space, else the current sequence is closed (padded by
  `collate`) and a new one starts with it. A document longer than L fills the free space of the
  current sequence and continues in the next ones (each piece is a segment of its own).
- `mode="fill"`: documents are concatenated and cut every L tokens (no padding but at the very end);
  any document may be split.
In both modes no token is lost or repeated, and the last, partial sequence is emitted.

Every sequence carries, per token, `position_ids` (0 at the start of each segment: a piece that
continues a document from the previous sequence starts at 0 too, since it cannot attend to its
start) and `document_ids` (0, 1, … per segment within the sequence) for block-diagonal attention.
`collate` pads to a fixed length with PAD, an `attention_mask`, and `labels` equal to the ids with
-100 on padding and on each segment's first token (nothing earlier in its block predicts it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["IGNORE_INDEX", "PackedSequence", "Packer", "block_causal_mask", "collate", "pack_documents"]

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips by default
PackMode = Literal["fit", "fill"]


@dataclass
class PackedSequence:
    """One packed sequence (at most `seq_len` ids, unpadded) and where its stream stands after it.

    `documents[k]` names the document of segment k; `cursor` is (documents fully emitted, tokens
    of the next document emitted) after this sequence: the point to resume packing from."""

    input_ids: np.ndarray
    position_ids: np.ndarray
    document_ids: np.ndarray
    documents: list[Any] = field(default_factory=list)
    cursor: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "document_ids": self.document_ids,
            "documents": list(self.documents),
            "cursor": self.cursor,
        }


class Packer:
    """Streaming greedy packer (module docstring); feed documents with `add`, then `finish`."""

    def __init__(self, seq_len: int, *, mode: PackMode = "fit", start: tuple[int, int] = (0, 0)) -> None:
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
        if mode not in ("fit", "fill"):
            raise ValueError(f"mode must be 'fit' or 'fill', got {mode!r}")
        self.seq_len = seq_len
        self.mode = mode
        self._pieces: list[tuple[np.ndarray, Any]] = []
        self._used = 0
        self._dtype: np.dtype | None = None
        self._next_index = int(start[0])  # stream index of the next document `add` receives

    def _close(self, cursor: tuple[int, int]) -> PackedSequence | None:
        if not self._pieces:
            return None
        ids = np.concatenate([p for p, _ in self._pieces])
        lengths = [len(p) for p, _ in self._pieces]
        position_ids = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
        document_ids = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
        sequence = PackedSequence(ids, position_ids, document_ids, [d for _, d in self._pieces], cursor)
        self._pieces, self._used = [], 0
        return sequence

    def add(self, tokens: Any, document: Any = None, *, offset: int = 0) -> Iterator[PackedSequence]:
        """Place one document (its ids from `offset` on: a resumed stream's partial first document);
        yields the sequences it closes."""
        ids = np.asarray(tokens)
        if ids.ndim != 1:
            raise ValueError(f"a document is a 1-D id array, got shape {ids.shape}")
        index = self._next_index
        self._next_index += 1
        pos = int(offset)
        total = len(ids)
        L = self.seq_len
        if self.mode == "fit" and total - pos <= L and self._used + (total - pos) > L:
            closed = self._close((index, pos))
            if closed is not None:
                yield closed
        while total - pos > 0:
            room = L - self._used
            take = min(room, total - pos)
            self._pieces.append((ids[pos : pos + take], document))
            self._used += take
            pos += take
            if self._used == L:
                cursor = (index + 1, 0) if pos == total else (index, pos)
                closed = self._close(cursor)
                if closed is not None:
                    yield closed

    def finish(self) -> Iterator[PackedSequence]:
        """Emit the last, partial sequence (if any)."""
        closed = self._close((self._next_index, 0))
        if closed is not None:
            yield closed


def pack_documents(
    documents: Iterable[Any],
    *,
    seq_len: int,
    mode: PackMode = "fit",
    names: Iterable[Any] | None = None,
) -> Iterator[PackedSequence]:
    """Pack an iterable of 1-D id arrays (module docstring); `names` label the segments."""
    packer = Packer(seq_len, mode=mode)
    labels = iter(names) if names is not None else None
    for index, tokens in enumerate(documents):
        yield from packer.add(tokens, next(labels) if labels is not None else index)
    yield from packer.finish()


def _field(sample: Any, name: str) -> Any:
    return getattr(sample, name) if isinstance(sample, PackedSequence) else sample[name]


def collate(
    samples: Sequence[PackedSequence | Mapping[str, Any]], *, pad_id: int, pad_to: int | None = None
) -> dict[str, Any]:
    """Packed sequences → a padded batch of torch tensors (int64):

    `input_ids` (PAD after each sequence), `attention_mask` (1 on tokens, 0 on padding),
    `position_ids` (0 on padding), `document_ids` (-1 on padding), `labels` (the ids, -100 on
    padding and on each segment's first token). Pads to `pad_to` (a fixed length, say seq_len) or
    to the longest sample. Bookkeeping keys (`documents`, `worker`, `cursor`) pass through as lists."""
    import torch

    if not samples:
        raise ValueError("collate needs at least one sample")
    ids = [np.asarray(_field(s, "input_ids")) for s in samples]
    longest = max(len(x) for x in ids)
    length = longest if pad_to is None else int(pad_to)
    if length < longest:
        raise ValueError(f"a sample has {longest} ids, more than pad_to={pad_to}")
    batch = len(samples)
    input_ids = np.full((batch, length), pad_id, dtype=np.int64)
    attention = np.zeros((batch, length), dtype=np.int64)
    positions = np.zeros((batch, length), dtype=np.int64)
    documents = np.full((batch, length), -1, dtype=np.int64)
    for row, (sample, x) in enumerate(zip(samples, ids, strict=True)):
        n = len(x)
        input_ids[row, :n] = x
        attention[row, :n] = 1
        positions[row, :n] = np.asarray(_field(sample, "position_ids"))
        documents[row, :n] = np.asarray(_field(sample, "document_ids"))
    labels = np.where((attention == 1) & (positions > 0), input_ids, IGNORE_INDEX)
    out: dict[str, Any] = {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention),
        "position_ids": torch.from_numpy(positions),
        "document_ids": torch.from_numpy(documents),
        "labels": torch.from_numpy(labels),
    }
    for key in ("documents", "worker", "cursor"):
        values = [getattr(s, key, None) if isinstance(s, PackedSequence) else s.get(key) for s in samples]
        if any(v is not None for v in values):
            out[key] = values
    return out


def block_causal_mask(document_ids: Any) -> Any:
    """Boolean attention mask [B, L, L] (True = may attend) from `document_ids` [B, L]: causal
    within each segment, nothing across segments. Padding (-1) attends only to itself, so no row is
    empty (an all-masked softmax row gives NaN)."""
    import torch

    doc = torch.as_tensor(document_ids)
    length = doc.shape[-1]
    same = doc.unsqueeze(-1) == doc.unsqueeze(-2)
    causal = torch.ones(length, length, dtype=torch.bool, device=doc.device).tril()
    mask = same & causal & (doc >= 0).unsqueeze(-1)
    return mask | torch.eye(length, dtype=torch.bool, device=doc.device)
