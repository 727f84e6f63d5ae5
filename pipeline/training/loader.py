"""A resumable, sharded PyTorch loader over semtok outputs, and a Ray Data reader of the same files.

What it reads: the token Parquet files the manifest of each output names (`read_manifest`, the
commit point), never a listing, so half-written units are invisible and a consolidated manifest
index serves it for free.

How an epoch is cut (all of it a pure function of seed, epoch and the plan, so every rank and
every DataLoader worker computes the same cut without talking to the others):
1. Plan (once, at construction): per output, the listed files and the rows that pass the filters
   (duration, metadata, the train/validation split). Without filters the row counts come from the
   manifest and nothing is read; with filters only the light columns (id, duration_s, metadata…)
   are read. The plan's digest goes into every state, so a state never resumes over a changed plan.
2. File order: shuffled by (seed, epoch). The selected items, in that order, form the epoch's
   global sequence of N items.
3. Sharding: rank r of R takes positions [floor(r·N/R), floor((r+1)·N/R)) (ranks differ by at most
   one item); with `drop_uneven=True` every rank takes exactly floor(N/R) (the last N mod R
   items of the shuffled order are skipped that epoch). Within a rank, DataLoader worker w of W
   takes the same rule's w-th part of the rank's range. Every item is read exactly once per
   epoch (minus the `drop_uneven` remainder). A rank's item count differs by at most one from
   another's; for DDP, where every rank must run the same number of steps, use `drop_uneven=True`
   (equal items; with packing, also cap the steps, since packed sequence counts follow token counts).
4. Order within a worker: a shuffle buffer (`shuffle_buffer` items) seeded by (seed, epoch, rank,
   worker), over the worker's contiguous run of files (read row group by row group).

Resume: each yielded element carries `worker` and `cursor` (the worker's stream position after
it: items emitted; for packed sequences (items done, tokens of the next done)). A worker's stream
is a pure function of (seed, epoch, rank, world size, worker, number of workers), so the state is
one cursor per worker; resuming re-derives the order (on indices, reading nothing) and reads only
the row groups still holding unemitted items. In-process iteration tracks cursors itself; with
DataLoader workers, `TokenLoader` tracks them from the batches the training loop received (not
those prefetched), so `state_dict()` between two steps resumes exactly at the next step. A state
resumes only with the same seed, ranks, worker count and plan (ValueError otherwise).

Mixing several outputs (`weights`): each output is sharded as above; each worker draws the source
of every next item with probabilities ∝ weights from an RNG seeded by (seed, epoch, worker) — not
the rank, so with `drop_uneven` all ranks draw the same source sequence and stay equal.
`mix_stop="first"` (default): the epoch ends when a source runs out (for that worker), so
proportions follow the weights throughout and the other sources' unread items wait for a later
epoch, which reshuffles (a worker whose share of some source is empty yields nothing).
`mix_stop="all"`: exhausted sources drop out and weights renormalize over the rest, so every
item of every source is read exactly once per epoch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.io.storage import open_filesystem, with_retries
from pipeline.training.packing import Packer, PackMode, collate
from pipeline.training.source import OutputSource, resolve_output
from pipeline.training.token_layout import TokenLayout

__all__ = [
    "LoaderConfig",
    "PackedTokenDataset",
    "RowFilter",
    "SourceSpec",
    "TokenDataset",
    "TokenLoader",
    "build_dataset",
    "build_loader",
    "collate_items",
    "read_tokens_dataset",
    "split_of",
]

STATE_FORMAT = "semtok.loader_state"
READ_THREADS = 16
TOKEN_COLUMNS = (
    "id",
    "semantic_tokens",
    "acoustic_tokens",
    "n_frames",
    "duration_s",
    "source_uri",
    "metadata",
)
LIGHT_COLUMNS = ("id", "n_frames", "duration_s", "source_uri", "metadata")


# --- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceSpec:
    """One semtok output to read: an output root (plus `version` when it holds several) or a
    version folder; `weight` matters only when mixing several."""

    url: str
    weight: float = 1.0
    version: str | None = None
    storage_options: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class RowFilter:
    """Which rows an epoch uses. All conditions must hold.

    `metadata_equals`: metadata key → required value (a list/tuple/set value means "any of");
    `where`: a predicate over the row's light fields {id, n_frames, duration_s, source_uri,
    metadata (a dict)}; `split` keeps the train or validation side of a stable hash of the id:
    an item is in validation when blake2b(split_seed, id) / 2^64 < validation_fraction, so a split
    never moves when the output grows or the shuffling seed changes."""

    min_duration_s: float | None = None
    max_duration_s: float | None = None
    metadata_equals: Mapping[str, Any] | None = None
    where: Callable[[dict[str, Any]], bool] | None = None
    split: Literal["train", "validation"] | None = None
    validation_fraction: float = 0.0
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in (None, "train", "validation"):
            raise ValueError(f"split must be 'train', 'validation' or None, got {self.split!r}")
        if not 0.0 <= float(self.validation_fraction) <= 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1], got {self.validation_fraction!r}")
        if (
            self.min_duration_s is not None
            and self.max_duration_s is not None
            and self.min_duration_s > self.max_duration_s
        ):
            raise ValueError(f"min_duration_s {self.min_duration_s} > max_duration_s {self.max_duration_s}")

    @property
    def active(self) -> bool:
        return any(
            (
                self.min_duration_s is not None,
                self.max_duration_s is not None,
                bool(self.metadata_equals),
                self.where is not None,
                self.split is not None,
            )
        )

    @property
    def columns(self) -> list[str]:
        """The light columns a decision needs."""
        if self.where is not None:
            return list(LIGHT_COLUMNS)
        needed = {"id"}
        if self.min_duration_s is not None or self.max_duration_s is not None:
            needed.add("duration_s")
        if self.metadata_equals:
            needed.add("metadata")
        return [c for c in LIGHT_COLUMNS if c in needed]

    def describe(self) -> dict[str, Any]:
        """What goes into the plan digest (a predicate by name only)."""
        return {
            "min_duration_s": self.min_duration_s,
            "max_duration_s": self.max_duration_s,
            "metadata_equals": _jsonable(self.metadata_equals),
            "where": getattr(self.where, "__qualname__", repr(self.where)) if self.where else None,
            "split": self.split,
            "validation_fraction": self.validation_fraction,
            "split_seed": self.split_seed,
        }

    def mask(self, table: pa.Table) -> np.ndarray:
        """Boolean keep-mask over a table holding (at least) `columns`."""
        keep = np.ones(table.num_rows, dtype=bool)
        if self.min_duration_s is not None or self.max_duration_s is not None:
            durations = table.column("duration_s").to_numpy()
            if self.min_duration_s is not None:
                keep &= durations >= float(self.min_duration_s)
            if self.max_duration_s is not None:
                keep &= durations <= float(self.max_duration_s)
        if self.split is not None:
            ids = table.column("id").to_pylist()
            in_validation = np.fromiter(
                (split_of(i, self.validation_fraction, seed=self.split_seed) == "validation" for i in ids),
                dtype=bool,
                count=len(ids),
            )
            keep &= in_validation if self.split == "validation" else ~in_validation
        if self.metadata_equals or self.where is not None:
            rows = table.select([c for c in LIGHT_COLUMNS if c in table.column_names]).to_pylist()
            for index, row in enumerate(rows):
                if not keep[index]:
                    continue
                row["metadata"] = json.loads(row.get("metadata") or "{}")
                keep[index] = _metadata_matches(row["metadata"], self.metadata_equals) and (
                    self.where is None or bool(self.where(row))
                )
        return keep


@dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    """Everything a `TokenDataset` needs (module docstring for the semantics of each part).

    `rank`/`world_size` default to torch.distributed's when it is initialized, else 0/1.
    `layout`: also yield `input_ids` (the item's flat ids, `add_bos_eos`). `as_tensors`: int64
    torch tensors instead of uint16 numpy arrays."""

    sources: tuple[SourceSpec, ...]
    seed: int = 0
    shuffle: bool = True
    shuffle_buffer: int = 1024
    rank: int | None = None
    world_size: int | None = None
    drop_uneven: bool = False
    filter: RowFilter = field(default_factory=RowFilter)
    mix_stop: Literal["first", "all"] = "first"
    layout: TokenLayout | None = None
    add_bos_eos: bool = True
    as_tensors: bool = False

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("no source to read")
        for spec in self.sources:
            if not 0 < float(spec.weight) < float("inf"):  # inf would make every probability NaN
                raise ValueError(f"source weights must be finite and > 0, got {spec.weight!r} for {spec.url}")
        if self.mix_stop not in ("first", "all"):
            raise ValueError(f"mix_stop must be 'first' or 'all', got {self.mix_stop!r}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        if (self.rank is None) != (self.world_size is None):
            raise ValueError("pass both rank and world_size, or neither")
        if self.world_size is not None and self.rank is not None and not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside [0, {self.world_size})")


# --- helpers ------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    return value


def _metadata_matches(metadata: Mapping[str, Any], wanted: Mapping[str, Any] | None) -> bool:
    for key, value in (wanted or {}).items():
        if key not in metadata:
            return False
        if isinstance(value, (list, tuple, set, frozenset)):
            if metadata[key] not in value:
                return False
        elif metadata[key] != value:
            return False
    return True


def split_of(item_id: str, validation_fraction: float, *, seed: int = 0) -> str:
    """'validation' or 'train' for an item id: a stable hash of (seed, id), independent of order,
    of the shuffling seed, of the rank and of what else the output holds."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{item_id}".encode(), digest_size=8).digest()
    return "validation" if int.from_bytes(digest, "big") / 2**64 < validation_fraction else "train"


def _rng(*key: int) -> np.random.Generator:
    """An RNG per (purpose, seed, epoch, …): PCG64 through SeedSequence, stable across numpy versions."""
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key])


_PURPOSE_FILES, _PURPOSE_BUFFER, _PURPOSE_MIX = 1, 2, 3


def _share(total: int, parts: int, index: int, *, equal: bool) -> tuple[int, int]:
    """[start, end) of part `index` of `total` positions cut into `parts` (sizes differ by ≤ 1;
    with `equal`, every part floor(total/parts) and the remainder unused)."""
    if equal:
        size = total // parts
        return index * size, (index + 1) * size
    return index * total // parts, (index + 1) * total // parts


def _buffer_order(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """The emission order of a shuffle buffer of `size` over positions 0..n-1, computed on indices
    (so a resume can skip emitted items without reading them). Position p is emitted no earlier
    than step p - size: the reader never holds more than ~size items ahead."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    size = min(size, n)
    order = np.empty(n, dtype=np.int64)
    buffer = list(range(size))
    picks = rng.integers(0, size, size=n - size)
    for step, position in enumerate(range(size, n)):
        slot = int(picks[step])
        order[step] = buffer[slot]
        buffer[slot] = position
    order[n - size :] = np.asarray(buffer, dtype=np.int64)[rng.permutation(size)]
    return order


@dataclass
class FilePlan:
    """One token file of a source: its total rows and the rows an epoch uses (None = all)."""

    path: str
    n_rows: int
    rows: np.ndarray | None = None

    @property
    def count(self) -> int:
        return self.n_rows if self.rows is None else int(self.rows.size)

    def selected(self, start: int, end: int) -> np.ndarray:
        """Row numbers of the selected rows [start, end) (in selection order)."""
        if self.rows is None:
            return np.arange(start, end, dtype=np.int64)
        return self.rows[start:end]


def _distributed_defaults() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# --- the dataset --------------------------------------------------------------------------------
class _Resumable(IterableDataset):
    """Epoch, per-worker cursors, and the state format shared by the item and packed datasets."""

    kind = "items"

    def __init__(self) -> None:
        super().__init__()
        self._epoch = 0
        self._resume: dict[int, Any] = {}  # worker → cursor, for `_resume_epoch` only
        self._resume_epoch: int | None = None
        self._resume_workers: int | None = None
        self._cursors: dict[int, Any] = {}  # in-process iteration: what the caller received
        self._cursor_streams = 1  # the worker count those cursors belong to

    # the sharding identity, provided by subclasses
    def _identity(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate (like DistributedSampler.set_epoch); a loaded state applies
        to its own epoch only. A change of epoch moves the resume point to the start of the new
        one (or to a loaded state of it): the last epoch's cursors would skip the new one's items."""
        if int(epoch) == self._epoch:
            return
        self._epoch = int(epoch)
        self._cursors, streams = self._pending_resume()
        self._cursor_streams = streams or 1

    def _pending_resume(self) -> tuple[dict[int, Any], int | None]:
        """The loaded, not yet used resume point of the selected epoch: (cursors, worker streams),
        else ({}, None)."""
        if self._resume_epoch == self._epoch and self._resume:
            return dict(self._resume), self._resume_workers
        return {}, None

    def _start(self, worker: int, num_workers: int) -> Any:
        """Where this worker's stream starts: its loaded cursor for this epoch, else the start."""
        if self._resume_epoch != self._epoch or not self._resume:
            return None
        if self._resume_workers is not None and self._resume_workers != num_workers:
            raise ValueError(
                f"the loader state was taken with {self._resume_workers} worker stream(s), this"
                f" iteration has {num_workers}: resume with the same num_workers"
            )
        return self._resume.get(worker)

    def _state(self, cursors: Mapping[int, Any], num_workers: int) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "epoch": self._epoch,
            "num_workers": num_workers,
            "cursors": {str(w): _jsonable(c) for w, c in sorted(cursors.items())},
            **self._identity(),
        }

    def state_dict(self) -> dict[str, Any]:
        """The resume point of in-process iteration (no DataLoader workers): JSON-able. With
        workers, take `TokenLoader.state_dict()` instead (the dataset object in the main process
        does not see what workers emitted)."""
        return self._state(self._cursors, self._cursor_streams)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume mid-epoch: the next iteration of `state['epoch']` yields exactly what was not yet
        received. ValueError when the state belongs to another loader (seed, ranks, plan, kind)."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError("not a semtok loader state")
        if state.get("kind") != self.kind:
            raise ValueError(f"a {state.get('kind')!r} loader state cannot resume a {self.kind!r} loader")
        mine = self._identity()
        for key, value in mine.items():
            if state.get(key) != value:
                raise ValueError(f"loader state has {key}={state.get(key)!r}, this loader {value!r}")
        self._epoch = int(state["epoch"])
        self._resume_epoch = self._epoch
        self._resume_workers = int(state["num_workers"])
        self._resume = {int(w): self._cursor_from_json(c) for w, c in state.get("cursors", {}).items()}
        # until an iteration starts, state_dict() gives back this state (whatever its worker count)
        self._cursors, self._cursor_streams = dict(self._resume), self._resume_workers

    @staticmethod
    def _cursor_from_json(value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    def _consume_resume(self) -> None:
        """A loaded state is used by one iteration; later ones start the epoch afresh."""
        self._resume, self._resume_epoch, self._resume_workers = {}, None, None

    def _track(self, elements: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """In the main process (no workers): follow what the caller received."""
        self._cursors, self._cursor_streams = self._pending_resume()[0], 1
        self._consume_resume()

        def follow() -> Iterator[dict[str, Any]]:
            for element in elements:
                self._cursors[element["worker"]] = element["cursor"]
                yield element

        return follow()


class TokenDataset(_Resumable):
    """Items of one or more semtok outputs, sharded, shuffled, filtered and resumable (module
    docstring). Yields dicts: id, semantic, acoustic, n_frames, duration_s, source_uri, metadata
    (dict), source (index into `config.sources`), worker, cursor, and input_ids with a layout."""

    def __init__(self, config: LoaderConfig) -> None:
        super().__init__()
        self.config = config
        self._sources: list[tuple[str, str, Mapping[str, Any] | None]] = []  # root, version, options
        self._plans: list[list[FilePlan]] = []
        opened: list[OutputSource] = []
        for spec in config.sources:
            source = resolve_output(spec.url, storage_options=spec.storage_options, version=spec.version)
            opened.append(source)
            self._sources.append((source.layout.root_url, source.layout.version, spec.storage_options))
        if config.layout is not None:
            for source in opened:
                fp = source.fingerprint()
                if (
                    int(fp.get("semantic_vocab_size", -1)) != config.layout.semantic_vocab_size
                    or int(fp.get("acoustic_vocab_size", config.layout.acoustic_vocab_size))
                    != config.layout.acoustic_vocab_size
                ):
                    raise ValueError(
                        f"{source.url}: tokens have vocabularies ({fp.get('semantic_vocab_size')},"
                        f" {fp.get('acoustic_vocab_size')}), the layout"
                        f" ({config.layout.semantic_vocab_size}, {config.layout.acoustic_vocab_size})"
                    )
        for source in opened:
            self._plans.append(self._plan(source))
        self._digest = self._plan_digest()
        self._fs_cache: dict[tuple[int, int], Any] = {}

    # --- plan ---------------------------------------------------------------------------------
    def _plan(self, source: OutputSource) -> list[FilePlan]:
        manifest = source.manifest()
        listed = [
            (source.layout.path(f["path"]), f.get("rows"))
            for _, entry in sorted(manifest.items())
            for f in entry["files"]
            if f["kind"] == "tokens"
        ]
        rule = self.config.filter
        fs = source.fs

        def plan_one(item: tuple[str, Any]) -> FilePlan:
            path, rows = item
            if not rule.active:
                if not isinstance(rows, int):  # entries from before `rows` was recorded
                    rows = with_retries(lambda: _footer_rows(fs, path))
                return FilePlan(path, int(rows))
            table = with_retries(lambda: _read_columns(fs, path, rule.columns))
            keep = np.flatnonzero(rule.mask(table))
            return FilePlan(path, table.num_rows, None if keep.size == table.num_rows else keep)

        if not listed:
            return []
        with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(listed))) as pool:
            plans = list(pool.map(plan_one, listed))
        return [p for p in plans if p.count]

    def _plan_digest(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(self.config.filter.describe(), sort_keys=True, default=repr).encode())
        for index, plans in enumerate(self._plans):
            root, version, _ = self._sources[index]
            h.update(f"\x00source\x00{version}\x00{self.config.sources[index].weight}".encode())
            for p in plans:
                rel = p.path[len(root) :] if p.path.startswith(root) else p.path
                h.update(f"\x00{rel}\x00{p.n_rows}\x00{p.count}".encode())
                if p.rows is not None:
                    h.update(np.ascontiguousarray(p.rows, dtype=np.int64).tobytes())
        return h.hexdigest()[:32]

    @property
    def num_items(self) -> int:
        """Items an epoch covers over all ranks (before `drop_uneven`, all sources)."""
        return sum(p.count for plans in self._plans for p in plans)

    def _rank_world(self) -> tuple[int, int]:
        if self.config.world_size is not None and self.config.rank is not None:
            return int(self.config.rank), int(self.config.world_size)
        return _distributed_defaults()

    def _identity(self) -> dict[str, Any]:
        rank, world = self._rank_world()
        return {"seed": self.config.seed, "rank": rank, "world_size": world, "plan": self._digest}

    def __getstate__(self) -> dict[str, Any]:
        """Workers get the plan, not the predicate (already applied; lambdas do not pickle) nor
        open file systems (re-opened per process: a forked S3 client is not safe to share)."""
        state = dict(self.__dict__)
        state["config"] = replace(self.config, filter=replace(self.config.filter, where=None))
        state["_fs_cache"] = {}
        return state

    def _fs(self, index: int) -> Any:
        key = (os.getpid(), index)
        if key not in self._fs_cache:
            root, _, options = self._sources[index]
            self._fs_cache[key] = open_filesystem(root, options)[0]
        return self._fs_cache[key]

    # --- one worker's stream -------------------------------------------------------------------
    def _segments(self, index: int, epoch: int, rank: int, world: int, worker: int, workers: int):
        """The worker's natural-order run of source `index`: [(file plan, selected rows)], count."""
        plans = self._plans[index]
        order = (
            _rng(_PURPOSE_FILES, self.config.seed, epoch, index).permutation(len(plans))
            if self.config.shuffle
            else np.arange(len(plans))
        )
        total = sum(p.count for p in plans)
        r0, r1 = _share(total, world, rank, equal=self.config.drop_uneven)
        w0, w1 = _share(r1 - r0, workers, worker, equal=False)
        start, end = r0 + w0, r0 + w1
        segments: list[tuple[FilePlan, np.ndarray]] = []
        offset = 0
        for file_index in order:
            plan = plans[int(file_index)]
            lo, hi = max(start, offset), min(end, offset + plan.count)
            if lo < hi:
                segments.append((plan, plan.selected(lo - offset, hi - offset)))
            offset += plan.count
            if offset >= end:
                break
        return segments, end - start

    def _source_stream(
        self, index: int, epoch: int, rank: int, world: int, worker: int, workers: int, skip: int
    ) -> Iterator[dict[str, Any]]:
        """Items of source `index` for one worker, in shuffle-buffer order, the first `skip` left out."""
        segments, n = self._segments(index, epoch, rank, world, worker, workers)
        if self.config.shuffle:
            rng = _rng(_PURPOSE_BUFFER, self.config.seed, epoch, index, rank, worker)
            order = _buffer_order(n, self.config.shuffle_buffer, rng)
        else:
            order = np.arange(n, dtype=np.int64)
        remaining = order[skip:]
        if remaining.size == 0:
            return
        due = np.full(n, -1, dtype=np.int64)
        due[remaining] = np.arange(remaining.size)
        pending: dict[int, dict[str, Any]] = {}
        next_due = 0
        local = 0
        fs = self._fs(index)
        for plan, rows in segments:
            file_due = due[local : local + rows.size]
            local += rows.size
            if not (file_due >= 0).any():
                continue
            for group_due, table in _read_groups(fs, plan.path, rows, file_due):
                for item, when in zip(_rows_to_items(table), group_due, strict=True):
                    item["source"] = index
                    pending[int(when)] = item
                while next_due in pending:
                    yield pending.pop(next_due)
                    next_due += 1
        if pending or next_due != remaining.size:  # pragma: no cover - a bug, never data
            raise RuntimeError("loader stream ended with items undelivered")

    def _mix_draws(self, counts: Sequence[int], epoch: int, worker: int) -> Iterator[int]:
        """The source of each next item (module docstring: mixing)."""
        rng = _rng(_PURPOSE_MIX, self.config.seed, epoch, worker)
        weights = np.array([float(s.weight) for s in self.config.sources])
        left = np.array(counts, dtype=np.int64)
        active = left > 0
        if self.config.mix_stop == "first" and not active.all():
            return
        while active.any():
            w = np.where(active, weights, 0.0)
            cumulative = np.cumsum(w / w.sum())
            for u in rng.random(256):
                pick = min(int(np.searchsorted(cumulative, u, side="right")), len(counts) - 1)
                while not active[pick]:  # float edge: land on an active source
                    pick -= 1
                left[pick] -= 1
                yield pick
                if left[pick] == 0:
                    active[pick] = False
                    if self.config.mix_stop == "first":
                        return
                    break

    def _worker_stream(
        self, worker: int, workers: int, start: int, epoch: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Items of one worker's stream from cursor `start` on, each tagged with worker/cursor."""
        epoch = self._epoch if epoch is None else epoch
        rank, world = self._rank_world()
        layout, as_tensors = self.config.layout, self.config.as_tensors
        n_sources = len(self._plans)
        if n_sources == 1:
            streams = [self._source_stream(0, epoch, rank, world, worker, workers, start)]
            draws: Iterator[int] = iter(lambda: 0, 1)  # always source 0, until it ends
        else:
            counts = [self._segments(i, epoch, rank, world, worker, workers)[1] for i in range(n_sources)]
            draws = self._mix_draws(counts, epoch, worker)
            skips = [0] * n_sources
            for _ in range(start):
                pick = next(draws, None)
                if pick is None:
                    return
                skips[pick] += 1
            streams = [
                self._source_stream(i, epoch, rank, world, worker, workers, skips[i])
                for i in range(n_sources)
            ]
        cursor = start
        for pick in draws:
            item = next(streams[pick], None)
            if item is None:
                return
            cursor += 1
            if layout is not None:
                item["input_ids"] = layout.encode(
                    item["semantic"], item["acoustic"], add_bos_eos=self.config.add_bos_eos
                )
            if as_tensors:
                for key in ("semantic", "acoustic", "input_ids"):
                    if key in item:
                        item[key] = torch.from_numpy(item[key].astype(np.int64))
            item["worker"] = worker
            item["cursor"] = cursor
            yield item
        for stream in streams:
            close = getattr(stream, "close", None)  # generators: release their open files now
            if close is not None:
                close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        if info is None:
            start = self._start(0, 1) or 0
            return self._track(self._worker_stream(0, 1, int(start)))
        start = self._start(info.id, info.num_workers) or 0
        return self._worker_stream(info.id, info.num_workers, int(start))


class PackedTokenDataset(_Resumable):
    """Packed sequences (pipeline/training/packing.py) of a `TokenDataset`'s `input_ids`, packed
    within each worker's stream; resumable to the token (cursor = items done, tokens done)."""

    kind = "packed"

    def __init__(self, items: TokenDataset, *, seq_len: int, mode: PackMode = "fit") -> None:
        super().__init__()
        if items.config.layout is None:
            raise ValueError("packing needs flat ids: give the item loader a TokenLayout (layout=)")
        Packer(seq_len, mode=mode)  # validates
        self.items = items
        self.seq_len = seq_len
        self.mode = mode

    @property
    def layout(self) -> TokenLayout:
        return self.items.config.layout  # type: ignore[return-value]

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.items.set_epoch(epoch)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.items.set_epoch(self._epoch)

    def _identity(self) -> dict[str, Any]:
        # the id layout sets every document's length, so token cursors mean nothing under another
        ids = {"order": self.layout.order, "add_bos_eos": self.items.config.add_bos_eos}
        return {**self.items._identity(), "seq_len": self.seq_len, "mode": self.mode, "ids": ids}

    def _worker_stream(self, worker: int, workers: int, start: tuple[int, int]) -> Iterator[dict[str, Any]]:
        done, offset = start
        packer = Packer(self.seq_len, mode=self.mode, start=(done, offset))
        first = True
        for item in self.items._worker_stream(worker, workers, done, self._epoch):
            ids = item["input_ids"]
            ids = ids.numpy() if isinstance(ids, torch.Tensor) else ids
            for sequence in packer.add(ids, item["id"], offset=offset if first else 0):
                yield {**sequence.as_dict(), "worker": worker}
            first = False
        for sequence in packer.finish():
            yield {**sequence.as_dict(), "worker": worker}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        start = self._start(worker, workers) or (0, 0)
        stream = self._worker_stream(worker, workers, (int(start[0]), int(start[1])))
        return self._track(stream) if info is None else stream


# --- reading ------------------------------------------------------------------------------------
def _open(fs: Any, path: str):
    return fs.open(path, "rb")


def _footer_rows(fs: Any, path: str) -> int:
    with _open(fs, path) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def _read_columns(fs: Any, path: str, columns: Sequence[str]) -> pa.Table:
    """Only the named columns (range reads on object stores: the token columns stay unread)."""
    with _open(fs, path) as handle:
        return pq.read_table(handle, columns=list(columns))


def _read_groups(
    fs: Any, path: str, rows: np.ndarray, due: np.ndarray
) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """Per row group holding a still-due row: (their due steps, those rows as a table)."""
    wanted = due >= 0
    rows, due = rows[wanted], due[wanted]
    with contextlib.ExitStack() as stack:
        handle = stack.enter_context(with_retries(lambda: _open(fs, path)))
        parquet = pq.ParquetFile(handle)
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        group_of = np.searchsorted(bounds, rows, side="right") - 1
        for group in np.unique(group_of):  # ascending: the file is read front to back
            members = np.flatnonzero(group_of == group)
            table = with_retries(
                functools.partial(parquet.read_row_group, int(group), columns=list(TOKEN_COLUMNS))
            )
            local = rows[members] - bounds[group]
            yield due[members], table.take(pa.array(local, pa.int64()))


def _rows_to_items(table: pa.Table) -> list[dict[str, Any]]:
    """Item dicts from a token table, tokens sliced from the flat buffers (no per-token Python)."""
    out: list[dict[str, Any]] = []
    semantic = table.column("semantic_tokens").combine_chunks()
    acoustic = table.column("acoustic_tokens").combine_chunks()
    s_off, s_val = semantic.offsets.to_numpy(), semantic.values.to_numpy(zero_copy_only=False)
    a_off, a_val = acoustic.offsets.to_numpy(), acoustic.values.to_numpy(zero_copy_only=False)
    ids = table.column("id").to_pylist()
    frames = table.column("n_frames").to_pylist()
    durations = table.column("duration_s").to_pylist()
    uris = table.column("source_uri").to_pylist()
    metadata = table.column("metadata").to_pylist()
    for i, item_id in enumerate(ids):
        out.append(
            {
                "id": item_id,
                "semantic": s_val[s_off[i] : s_off[i + 1]].copy(),
                "acoustic": a_val[a_off[i] : a_off[i + 1]].copy(),
                "n_frames": frames[i],
                "duration_s": durations[i],
                "source_uri": uris[i],
                "metadata": json.loads(metadata[i] or "{}"),
            }
        )
    return out


# --- DataLoader with a resume state -------------------------------------------------------------
def collate_items(items: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """A batch of items as lists per key (token arrays differ in length; pad with packing's
    `collate` or your own)."""
    return {key: [item[key] for item in items] for key in items[0]} if items else {}


def _unchanged(element: Any) -> Any:
    """The collate of `batch_size=None`: elements pass as they are (module level: it must pickle)."""
    return element


class TokenLoader:
    """A `torch.utils.data.DataLoader` over a `TokenDataset`/`PackedTokenDataset` that knows its
    resume point: it follows the `worker`/`cursor` of every batch the caller received, so
    `state_dict()` between two steps resumes at the next one. Workers are started per epoch
    (`persistent_workers` would keep a stale resume point in them, so it is refused)."""

    def __init__(
        self,
        dataset: TokenDataset | PackedTokenDataset,
        *,
        batch_size: int | None = 1,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        **dataloader_options: Any,
    ) -> None:
        if dataloader_options.get("persistent_workers"):
            raise ValueError("persistent_workers cannot be resumed exactly: leave it off")
        self.dataset = dataset
        self.num_workers = int(num_workers)
        if collate_fn is None and batch_size is None:
            collate_fn = _unchanged
        elif collate_fn is None and isinstance(dataset, PackedTokenDataset):
            collate_fn = functools.partial(collate, pad_id=dataset.layout.pad_id, pad_to=dataset.seq_len)
        elif collate_fn is None:
            collate_fn = collate_items
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_fn,
            **dataloader_options,
        )
        self._cursors: dict[int, Any] = {}
        self._cursor_streams = self.streams  # the worker count `_cursors` belong to

    @property
    def streams(self) -> int:
        return max(1, self.num_workers)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a change of epoch moves the resume point to the new one's start (or
        to a loaded state of it)."""
        if int(epoch) == self.dataset.epoch:
            return
        self.dataset.set_epoch(epoch)
        self._cursors, streams = self.dataset._pending_resume()
        self._cursor_streams = streams or self.streams

    def __iter__(self) -> Iterator[Any]:
        ds = self.dataset
        cursors = ds._pending_resume()[0]
        if self.num_workers == 0:
            stream = iter(self.loader)  # the dataset tracks itself, in this process
        else:
            ds._start(0, self.num_workers)  # the worker-count check, before workers start
            stream = iter(self.loader)  # workers start here, with the loaded state pickled in
            ds._consume_resume()
        self._cursors, self._cursor_streams = cursors, self.streams  # the check passed
        for batch in stream:
            workers = batch["worker"] if isinstance(batch, Mapping) else [b["worker"] for b in batch]
            batch_cursors = batch["cursor"] if isinstance(batch, Mapping) else [b["cursor"] for b in batch]
            if not isinstance(workers, (list, tuple)):  # batch_size=None: one element
                workers, batch_cursors = [workers], [batch_cursors]
            for worker, cursor in zip(workers, batch_cursors, strict=True):
                worker = int(worker)
                self._cursors[worker] = tuple(cursor) if isinstance(cursor, (list, tuple)) else int(cursor)
            yield batch

    def __len__(self) -> int:  # pragma: no cover - an IterableDataset has no length
        raise TypeError("a TokenLoader has no length; count steps instead")

    def state_dict(self) -> dict[str, Any]:
        """The resume point after the last batch this loader handed out (JSON-able)."""
        return self.dataset._state(self._cursors, self._cursor_streams)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.dataset.load_state_dict(state)
        self._cursors = dict(self.dataset._resume)
        self._cursor_streams = self.dataset._resume_workers or self.streams


# --- factories ----------------------------------------------------------------------------------
def _specs(
    sources: str | SourceSpec | Sequence[str | SourceSpec],
    weights: Sequence[float] | None,
    storage_options: Mapping[str, Any] | None,
    version: str | None,
) -> tuple[SourceSpec, ...]:
    items = [sources] if isinstance(sources, (str, SourceSpec)) else list(sources)
    if weights is not None and len(weights) != len(items):
        raise ValueError(f"{len(weights)} weights for {len(items)} sources")
    specs = []
    for i, item in enumerate(items):
        spec = item if isinstance(item, SourceSpec) else SourceSpec(str(item), 1.0, version, storage_options)
        if weights is not None:
            spec = replace(spec, weight=float(weights[i]))
        specs.append(spec)
    return tuple(specs)


def build_dataset(
    sources: str | SourceSpec | Sequence[str | SourceSpec],
    *,
    weights: Sequence[float] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    version: str | None = None,
    seq_len: int | None = None,
    pack_mode: PackMode = "fit",
    filter: RowFilter | None = None,  # noqa: A002 - the natural name
    **options: Any,
) -> TokenDataset | PackedTokenDataset:
    """A `TokenDataset` (or, with `seq_len`, a `PackedTokenDataset`) over one or more outputs.
    `options` are `LoaderConfig` fields (seed, shuffle, rank, world_size, layout, …) and
    `RowFilter` fields (min_duration_s, split, …)."""
    filter_fields = set(RowFilter.__dataclass_fields__)
    row_filter = filter or RowFilter(**{k: options.pop(k) for k in list(options) if k in filter_fields})
    if seq_len is not None and options.get("layout") is None:
        raise ValueError("seq_len (packing) needs layout= (a TokenLayout)")
    config = LoaderConfig(
        sources=_specs(sources, weights, storage_options, version), filter=row_filter, **options
    )
    dataset = TokenDataset(config)
    return dataset if seq_len is None else PackedTokenDataset(dataset, seq_len=seq_len, mode=pack_mode)


def build_loader(
    sources: str | SourceSpec | Sequence[str | SourceSpec],
    *,
    batch_size: int | None = 1,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    dataloader_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> TokenLoader:
    """A resumable `TokenLoader`: `build_dataset(sources, **options)` in a DataLoader."""
    return TokenLoader(
        build_dataset(sources, **options),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_fn,
        **dict(dataloader_options or {}),
    )


# --- Ray Data -----------------------------------------------------------------------------------
def read_tokens_dataset(
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    version: str | None = None,
    columns: Sequence[str] | None = None,
    filter: RowFilter | None = None,  # noqa: A002
    **read_options: Any,
):
    """The token rows of the files an output's manifest lists, as a `ray.data.Dataset` (for
    distributed preprocessing). `filter` keeps the same rows the loader would (`where` runs on the
    Ray workers, so it must pickle)."""
    import pyarrow.fs as pafs
    import ray.data

    source = resolve_output(url, storage_options=storage_options, version=version)
    paths = [source.fs._strip_protocol(p) for p in source.token_files()]
    if not paths:
        raise FileNotFoundError(f"{source.url} has no committed token files")
    filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(source.fs))
    dataset = ray.data.read_parquet(paths, filesystem=filesystem, **read_options)
    if filter is not None and filter.active:
        rule = filter

        def keep(batch: pa.Table) -> pa.Table:
            return batch.filter(pa.array(rule.mask(batch)))

        dataset = dataset.map_batches(keep, batch_format="pyarrow")
    if columns is not None:
        dataset = dataset.select_columns(list(columns))
    return dataset
