"""Token statistics over tokenized rows (no decoding): codebook usage, entropy, dead codes, rate.

Why: a healthy tokenization uses most of each codebook with high entropy and a steady frame
rate; collapse (a few codes everywhere), dead codebooks or a wrong rate show up here long before
anyone listens. The accumulator is streaming-friendly: Ray tasks each build a partial with
:meth:`TokenStats.add` (or :func:`read_token_stats` on a block), the driver combines them with
:meth:`TokenStats.merge`; counts are exact integers, so merging partials equals one pass.

Definitions (per codebook, over all frames in scope):
  p_k = count_k / total;  entropy H = -sum_k p_k log2 p_k (bits);  perplexity = 2**H;
  dead_code_share = (#codes with count 0) / vocab_size;  tokens_per_second = n_frames / duration_s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CODEBOOKS: tuple[str, ...] = ("semantic", "acoustic")
TOKEN_COLUMNS: tuple[str, ...] = ("semantic_tokens", "acoustic_tokens")
OVERALL = "overall"
#: Above this many histogram cells, read_token_stats counts group by group instead of in one
#: combined bincount (keeps memory bounded when there are very many groups).
_MAX_COMBINED_CELLS = 32_000_000


class _Part:
    """Counts for one scope (overall or one group)."""

    __slots__ = ("counts", "n_items", "n_frames", "duration_us")

    def __init__(self, vocab_sizes: Sequence[int]) -> None:
        self.counts = [np.zeros(v, dtype=np.int64) for v in vocab_sizes]
        self.n_items = 0
        self.n_frames = 0
        self.duration_us = 0  # integer microseconds: sums are exact, so merge order cannot matter

    def add(self, counts: Sequence[np.ndarray], n_items: int, n_frames: int, duration_us: int) -> None:
        for mine, theirs in zip(self.counts, counts, strict=True):
            mine += theirs
        self.n_items += n_items
        self.n_frames += n_frames
        self.duration_us += duration_us

    @property
    def duration_s(self) -> float:
        return self.duration_us / 1e6


def codebook_summary(counts: np.ndarray) -> dict[str, Any]:
    """Usage figures of one codebook histogram (see module docstring for definitions)."""
    total = int(counts.sum())
    vocab = int(counts.size)
    used = int(np.count_nonzero(counts))
    if total > 0:
        p = counts[counts > 0] / total
        entropy = float(-(p * np.log2(p)).sum())
        entropy = max(entropy, 0.0)  # -0.0 for a single used code
    else:
        entropy = 0.0
    return {
        "vocab_size": vocab,
        "n_tokens": total,
        "used_codes": used,
        "dead_code_share": (vocab - used) / vocab if vocab else 0.0,
        "entropy_bits": entropy,
        "perplexity": float(2.0**entropy) if total > 0 else 0.0,
        "max_entropy_bits": math.log2(vocab) if vocab else 0.0,
    }


class TokenStats:
    """Streaming accumulator of per-codebook histograms, overall and per caller-chosen group."""

    def __init__(self, vocab_sizes: Sequence[int], codebooks: Sequence[str] = CODEBOOKS) -> None:
        if len(vocab_sizes) != len(codebooks):
            raise ValueError(f"need one vocab size per codebook {tuple(codebooks)}, got {tuple(vocab_sizes)}")
        if any(int(v) <= 0 for v in vocab_sizes):
            raise ValueError(f"vocab sizes must be positive, got {tuple(vocab_sizes)}")
        self.vocab_sizes = tuple(int(v) for v in vocab_sizes)
        self.codebooks = tuple(codebooks)
        self._overall = _Part(self.vocab_sizes)
        self._groups: dict[Hashable, _Part] = {}

    # --- feeding ------------------------------------------------------------------------------

    def _check_range(self, tokens: np.ndarray, index: int) -> None:
        if tokens.size and (int(tokens.max()) >= self.vocab_sizes[index] or int(tokens.min()) < 0):
            raise ValueError(
                f"{self.codebooks[index]} token out of range [0, {self.vocab_sizes[index]}): "
                f"min {int(tokens.min())}, max {int(tokens.max())}"
            )

    def add_counts(
        self,
        counts: Sequence[np.ndarray],
        *,
        n_items: int,
        n_frames: int,
        duration_s: float,
        group: Hashable | None = None,
        duration_us: int | None = None,
    ) -> None:
        """Add pre-computed histograms (one per codebook) for ``n_items`` items.

        ``duration_us`` (exact integer microseconds) overrides ``duration_s`` when given.
        """
        counts = [np.asarray(c, dtype=np.int64) for c in counts]
        sizes = tuple(c.size for c in counts)
        if sizes != self.vocab_sizes:
            raise ValueError(f"histogram sizes {sizes} != vocab sizes {self.vocab_sizes}")
        us = int(duration_us) if duration_us is not None else int(round(float(duration_s) * 1e6))
        self._overall.add(counts, n_items, n_frames, us)
        if group is not None:
            part = self._groups.get(group)
            if part is None:
                part = self._groups[group] = _Part(self.vocab_sizes)
            part.add(counts, n_items, n_frames, us)

    def add(
        self, semantic: np.ndarray, acoustic: np.ndarray, duration_s: float, group: Hashable | None = None
    ) -> None:
        """Add one item's token rows (equal lengths: one pair per frame)."""
        streams = [np.asarray(semantic).ravel(), np.asarray(acoustic).ravel()]
        if len(streams) != len(self.vocab_sizes):
            raise ValueError("add() takes exactly the semantic and acoustic streams")
        if streams[0].size != streams[1].size:
            raise ValueError(f"semantic and acoustic lengths differ: {streams[0].size} vs {streams[1].size}")
        counts = []
        for i, s in enumerate(streams):
            s = s.astype(np.int64, copy=False)
            self._check_range(s, i)
            counts.append(np.bincount(s, minlength=self.vocab_sizes[i]))
        self.add_counts(
            counts, n_items=1, n_frames=int(streams[0].size), duration_s=float(duration_s), group=group
        )

    def merge(self, other: TokenStats) -> TokenStats:
        """Add another partial into this one (in place; returns self for chaining)."""
        if other.vocab_sizes != self.vocab_sizes or other.codebooks != self.codebooks:
            raise ValueError(f"cannot merge stats of {other.vocab_sizes} into {self.vocab_sizes}")
        o = other._overall
        self._overall.add(o.counts, o.n_items, o.n_frames, o.duration_us)
        for g, part in other._groups.items():
            mine = self._groups.get(g)
            if mine is None:
                mine = self._groups[g] = _Part(self.vocab_sizes)
            mine.add(part.counts, part.n_items, part.n_frames, part.duration_us)
        return self

    # --- reading ------------------------------------------------------------------------------

    @property
    def groups(self) -> list[Hashable]:
        return sorted(self._groups, key=str)

    def histogram(self, codebook: str, group: Hashable | None = None) -> np.ndarray:
        """Usage counts [vocab] of one codebook, overall (group None) or for one group."""
        part = self._overall if group is None else self._groups[group]
        return part.counts[self.codebooks.index(codebook)].copy()

    def _part_summary(self, part: _Part, include_histograms: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_items": part.n_items,
            "n_frames": part.n_frames,
            "duration_s": part.duration_s,
            "tokens_per_second": part.n_frames / part.duration_s if part.duration_s > 0 else None,
            "codebooks": {},
        }
        for name, counts in zip(self.codebooks, part.counts, strict=True):
            cb = codebook_summary(counts)
            if include_histograms:
                cb["histogram"] = counts.tolist()
            out["codebooks"][name] = cb
        return out

    def summary(self, include_histograms: bool = False) -> dict[str, Any]:
        """JSON-able figures: ``{"overall": {...}, "groups": {str(group): {...}}}``."""
        return {
            "vocab_sizes": dict(zip(self.codebooks, self.vocab_sizes, strict=True)),
            OVERALL: self._part_summary(self._overall, include_histograms),
            "groups": {str(g): self._part_summary(self._groups[g], include_histograms) for g in self.groups},
        }


def _flat_tokens(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(all tokens as int64, per-row lengths) of a list<uint16> column, without Python loops."""
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(column)
    if isinstance(flat, pa.ChunkedArray):
        flat = flat.combine_chunks() if flat.num_chunks else pa.array([], pa.uint16())
    return flat.to_numpy(zero_copy_only=False).astype(np.int64, copy=False), lengths


def read_token_stats(
    table: pa.Table,
    vocab_sizes: Sequence[int],
    group_column: str | None = None,
    group_of: Callable[[Any], Hashable] | None = None,
    stats: TokenStats | None = None,
) -> TokenStats:
    """Accumulate a tokens-schema table (``semantic_tokens``, ``acoustic_tokens`` list<uint16>,
    ``n_frames``, ``duration_s``, ...) into ``stats`` (a new TokenStats when None).

    ``group_column`` names the grouping column (e.g. "source_uri" or a unit column); ``group_of``
    maps its values to group keys (e.g. a URI prefix). All counting is vectorized: the list
    columns are flattened by pyarrow and counted with one ``np.bincount`` per codebook over
    (group, token) cells.
    """
    stats = stats if stats is not None else TokenStats(vocab_sizes)
    if tuple(int(v) for v in vocab_sizes) != stats.vocab_sizes:
        raise ValueError(f"vocab sizes {tuple(vocab_sizes)} != the accumulator's {stats.vocab_sizes}")
    if table.num_rows == 0:
        return stats
    n_frames = pc.fill_null(table.column("n_frames"), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    duration = pc.fill_null(table.column("duration_s"), 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
    duration_us = np.rint(duration * 1e6).astype(np.int64)  # same rounding as add(): exact sums

    if group_column is None:
        keys: list[Hashable] = [None]
        row_group = np.zeros(table.num_rows, dtype=np.int64)
    else:
        values = table.column(group_column).to_pylist()
        mapped = [group_of(v) if group_of is not None else v for v in values]
        mapped = ["<null>" if m is None else m for m in mapped]
        index: dict[Hashable, int] = {}
        row_group = np.fromiter(
            (index.setdefault(m, len(index)) for m in mapped), dtype=np.int64, count=len(mapped)
        )
        keys = list(index)
    n_groups = len(keys)

    per_group_counts: list[list[np.ndarray]] = [[] for _ in keys]
    for i, column in enumerate(TOKEN_COLUMNS):
        tokens, lengths = _flat_tokens(table.column(column))
        stats._check_range(tokens, i)
        vocab = stats.vocab_sizes[i]
        if n_groups == 1:
            per_group_counts[0].append(np.bincount(tokens, minlength=vocab))
            continue
        token_group = np.repeat(row_group, lengths)
        if n_groups * vocab <= _MAX_COMBINED_CELLS:
            cells = np.bincount(token_group * vocab + tokens, minlength=n_groups * vocab)
            for g, row in enumerate(cells.reshape(n_groups, vocab)):
                per_group_counts[g].append(row)
        else:
            order = np.argsort(token_group, kind="stable")
            bounds = np.searchsorted(token_group[order], np.arange(n_groups + 1))
            for g in range(n_groups):
                sel = tokens[order[bounds[g] : bounds[g + 1]]]
                per_group_counts[g].append(np.bincount(sel, minlength=vocab))

    items = np.bincount(row_group, minlength=n_groups)
    frames = np.zeros(n_groups, dtype=np.int64)
    micros = np.zeros(n_groups, dtype=np.int64)
    np.add.at(frames, row_group, n_frames)  # integer sums (bincount weights would go via float)
    np.add.at(micros, row_group, duration_us)
    for g, key in enumerate(keys):
        stats.add_counts(
            per_group_counts[g],
            n_items=int(items[g]),
            n_frames=int(frames[g]),
            duration_s=0.0,
            duration_us=int(micros[g]),
            group=key,
        )
    return stats
