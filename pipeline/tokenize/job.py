"""The tokenize job: plan → prepare (CPU) → encode (actor pool) → assemble + commit (committers).

`build_tokenize_dataset` wires the Ray Data stages; `run_tokenize` plans the work against what is
already committed (the plan streams while the input is listed, on a planning thread: `UnitFeed`),
encodes the units in rounds (up to ROUND_FILES files, ROUND_UNITS units), has committer actors
assemble and commit each finished unit atomically (pipeline/tokenize/commit_stage.py: the driver
routes block references and counts reports, it opens no block), compacts the manifest once enough
entry files exist, and writes the run record and dataset card.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from pipeline.config import ConfigError, TokenizeConfig
from pipeline.dataset.card import write_dataset_card
from pipeline.dataset.commit import add_webdataset_twin, cleanup_tmp
from pipeline.dataset.compaction import COMPACT_MIN_LOOSE, compact_manifest
from pipeline.dataset.layout import OutputLayout, is_local
from pipeline.dataset.lease import LeaseLost, OutputLease, acquire_lease
from pipeline.dataset.run_records import utc_now_iso, write_run_record
from pipeline.io.sources import read_policy_for
from pipeline.io.storage import (
    open_filesystem,
    redact_text,
    redact_uri,
    with_retries,
)
from pipeline.records import InputUnit
from pipeline.runtime.interrupt import Interrupted
from pipeline.runtime.ray_setup import init_ray, worker_storage_options
from pipeline.runtime.telemetry import JobMetrics
from pipeline.tokenize.assemble import FinishedUnit
from pipeline.tokenize.commit_stage import (
    BLOCKS_PER_CALL,
    BLOCKS_WAIT_S,
    COMMIT_RETRIES,
    CommitReport,
    CommitterPool,
    LeaseGuard,
    UnitCommitter,
)
from pipeline.tokenize.encode_stage import EncodeActor
from pipeline.tokenize.fingerprint import job_fingerprint
from pipeline.tokenize.prepare_stage import PrepareUnit
from pipeline.tokenize.work_plan import PlanStream, stream_remaining

log = logging.getLogger(__name__)


# The plan streams while the input is listed (`PlanStream`); the units are encoded in rounds, one
# Ray Data execution each (Ray Data needs a dataset's blocks up front), so driver memory holds at
# most two rounds of units and encoding starts after the first round is listed. A round holds at
# most ROUND_FILES input files (a unit weighs its URIs: files, or shards and tables) and ROUND_UNITS
# units; it waits up to ROUND_WAIT_S to fill while the listing is slower than that. Each round
# starts its encoder pool afresh (one model load per encoder) and drains its last units before the
# next starts, so rounds are sized by work, not by unit count: 10^7 files make ~20 rounds in units
# of 32 files or more, and two rounds of URIs (~2^20 strings) bound what the driver holds. The unit
# cap stays because each unit is one Ray Data block (put by the driver) and one prepare task.
ROUND_FILES = 2**19
ROUND_UNITS = 16384
ROUND_WAIT_S = 30.0


@dataclass
class Resources:
    """How the encode stage is laid out on the cluster.

    `num_encoders` actors start; the pool then stays between `min_encoders` and `max_encoders`
    (None: no bound, the pool follows the cluster as GPU nodes join or leave)."""

    device: str
    num_encoders: int
    cpus_per_encoder: float
    gpus_per_encoder: float
    batch_segments: int
    min_encoders: int | None = None  # None: num_encoders (a fixed pool)
    max_encoders: int | None = None  # None with min_encoders set: unbounded

    def pool(self) -> Any:
        """The Ray Data actor pool strategy: fixed, or elastic starting at full size."""
        import ray

        if self.min_encoders is None:
            return ray.data.ActorPoolStrategy(size=self.num_encoders)
        return ray.data.ActorPoolStrategy(
            min_size=self.min_encoders, max_size=self.max_encoders, initial_size=self.num_encoders
        )


@dataclass
class RunSummary:
    run_id: str
    output: str
    started_at: str = field(default_factory=utc_now_iso)
    finished_at: str = ""
    units_planned: int = 0
    units_skipped: int = 0
    units_committed: int = 0
    items: int = 0
    items_ok: int = 0
    items_failed: int = 0
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    resources: dict[str, Any] = field(default_factory=dict)

    @property
    def audio_hours(self) -> float:
        return self.audio_seconds / 3600

    @property
    def real_time_factor(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data.update(audio_hours=self.audio_hours, real_time_factor=self.real_time_factor)
        return data

    def line(self) -> str:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors_by_reason.items())) or "none"
        return (
            f"{self.items} items ({self.items_ok} tokenized, {self.items_failed} failed), "
            f"{self.audio_hours:.3f} audio-hours, {self.units_committed} units committed "
            f"({self.units_skipped} already done), wall {self.wall_seconds:.1f} s, "
            f"{self.real_time_factor:.1f}x real time; errors: {errors}"
        )


def plan_resources(config: TokenizeConfig, cluster: dict[str, float]) -> Resources:
    """Encoder pool from config or from the cluster; a clear error instead of a hang."""
    gpus = float(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 1))
    device = config.device
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    if device == "cuda":
        if gpus <= 0:
            raise ConfigError(
                "device='cuda' but the Ray cluster has no GPUs: use --device cpu, or add GPU nodes"
            )
        per = config.gpus_per_encoder
        count = config.num_encoders or max(1, int(gpus // per))
        if count * per > gpus:
            raise ConfigError(
                f"num_encoders={count} × gpus_per_encoder={per} exceeds the cluster's {gpus:g} GPUs"
            )
        # Without --num-encoders the pool starts on every GPU there is and follows the cluster:
        # Ray Data adds encoders as GPU nodes join (an autoscaling cluster) and lets idle ones go.
        elastic = {} if config.num_encoders else {"min_encoders": 1, "max_encoders": None}
        return Resources(
            "cuda", count, config.cpus_per_encoder or 1.0, per, config.encode_batch_segments or 32, **elastic
        )
    # CPU: the prepare stage keeps `read_cpus`, or it never gets a CPU (Ray's small-node deadlock);
    # the encoders share the rest, about 8 CPUs (torch threads) each, in a fixed pool (a growing
    # one would take the prepare stage's CPUs).
    free = cpus - config.read_cpus
    count = config.num_encoders or max(1, round(free / 8))
    per = config.cpus_per_encoder or max(free / count, 0.5)
    if count * per + config.read_cpus > cpus + 1e-9:
        raise ConfigError(
            f"num_encoders={count} x cpus_per_encoder={per:g} + read_cpus="
            f"{config.read_cpus:g} exceeds the cluster's {cpus:g} CPUs (it would hang)"
        )
    # 32 segments a batch: the BiLSTM is memory-bound alone and compute-bound from ~32 rows (3.5x
    # batch 1 per segment here, bench/encode_throughput.py); 64 gains little more for twice the memory
    return Resources("cpu", count, per, 0.0, config.encode_batch_segments or 32)


def prepare_options(config: TokenizeConfig, run_id: str = "") -> dict[str, Any]:
    """The prepare stage's keywords from a job config: what it may read, and each item's bounds.

    The attempt ledger (items that killed their worker `max_item_attempts` times become
    `worker_crashed` rows) is a local folder per run: Ray retries a task on a live node, and a
    rerun starts counting afresh."""
    ledger = os.path.join(tempfile.gettempdir(), "semtok-ledger", run_id) if run_id else None
    return {
        "channel_policy": config.channel_policy,
        "max_audio_seconds": config.max_audio_seconds,
        "storage_options": worker_storage_options(config.input, config.storage_options),
        "audio_column": config.audio_column,
        "uri_column": config.uri_column,
        "item_timeout_s": config.item_timeout_s,
        "max_decode_memory_bytes": config.max_decode_memory_bytes,
        "decode_options": {"resampler": config.resampler, "max_decoded_bytes": config.max_decoded_bytes},
        "stream_min_seconds": config.stream_min_seconds,
        "max_spill_bytes": config.max_spill_bytes,
        "spill_dir": config.spill_dir,
        "spool_min_bytes": config.spool_min_bytes,
        "ledger_dir": ledger,
        "max_item_attempts": config.max_item_attempts,
        "read_policy": read_policy_for(config),
    }


def build_tokenize_dataset(
    config: TokenizeConfig,
    units: list[InputUnit],
    resources: Resources,
    *,
    prepare_cls: type[PrepareUnit] = PrepareUnit,
    only_items: Mapping[str, Sequence[str]] | None = None,
    run_id: str = "",
):
    """The Ray Data stream of encoded rows for `units` (not executed until iterated).

    `only_items` (unit id → item ids) travels in each unit's row as "only", for a `prepare_cls`
    that reads just those items (retry-failed). Fault tolerance of the encode pool is Ray Data's
    default for actor pools, which we rely on and test (tests/test_faults.py): max_restarts=-1
    (a dead actor, e.g. on a lost node, is recreated) and max_task_retries=-1 (its in-flight
    batches are resubmitted); the only way to set them is the deprecated **ray_remote_args.
    """
    import ray

    spec = config.codec_spec()
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = False
    context.enable_progress_bars = False
    # Bound what may wait in the object store between stages, so a fast prepare stage cannot run
    # ahead of the encoders and worker memory stays flat however large the corpus is.
    budget = config.object_store_budget_mb or max(1024, 512 * resources.num_encoders)
    context.execution_options.resource_limits = context.execution_options.resource_limits.copy(
        object_store_memory=budget * 2**20
    )
    rows = [
        {
            "unit": unit.to_json(),
            **({"only": list(only_items.get(unit.unit_id, ()))} if only_items is not None else {}),
        }
        for unit in units
    ]
    dataset: ray.data.Dataset = ray.data.from_items(rows, override_num_blocks=max(1, len(units)))
    prepare = prepare_cls(spec, **prepare_options(config, run_id))
    dataset = dataset.flat_map(prepare, num_cpus=config.read_cpus)
    threads = math.ceil(resources.cpus_per_encoder) if resources.device == "cpu" else None
    return dataset.map_batches(
        EncodeActor,
        fn_constructor_kwargs={
            "spec": spec,
            "device": resources.device,
            "threads": threads,
            "batch_size": resources.batch_segments,
        },
        batch_size=resources.batch_segments,
        batch_format="numpy",
        compute=resources.pool(),
        num_cpus=resources.cpus_per_encoder,
        num_gpus=resources.gpus_per_encoder,
    )


class _Progress:
    def __init__(self, stream: TextIO, interval: float, total_units: int | None) -> None:
        self.stream, self.interval, self.total = stream, interval, total_units
        self.started = self.last = time.monotonic()

    def update(self, summary: RunSummary, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.started
        rate = summary.audio_seconds / elapsed if elapsed else 0.0
        done = summary.units_committed
        eta, total = "", "" if self.total is None else f"/{self.total}"
        if done and self.total is not None and done < self.total:
            eta = f", ETA {(self.total - done) * elapsed / done / 60:.1f} min"
        print(
            f"[semtok] {done}{total} units{' (listing)' if self.total is None else ''}, "
            f"{summary.items} items, "
            f"{summary.audio_hours:.3f} audio-h, {summary.items_failed} failed, "
            f"{rate:.1f}x real time{eta}",
            file=self.stream,
            flush=True,
        )


def run_tokenize(config: TokenizeConfig, *, stream: TextIO = sys.stderr) -> RunSummary:
    """Tokenize `config.input` into `config.output`; skips units already committed there.

    The run holds the output version's writer lease while it writes (a second run on the same
    output is refused with `OutputBusy`), and writes its run record however it ends: completed,
    failed or interrupted, with the units it committed, so `semtok status` shows every run."""
    started = time.monotonic()
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    fingerprint = job_fingerprint(config)
    if fingerprint.get("random_weights"):
        print(
            f"[semtok] WARNING: RANDOM codec weights ({config.weights}): tokens are meaningless "
            "and the output is marked so",
            file=stream,
            flush=True,
        )
    fs, _ = open_filesystem(config.output, config.storage_options)
    layout = OutputLayout.for_fingerprint(config.output, fingerprint)
    summary = RunSummary(run_id=run_id, output=redact_uri(layout.version_url))

    record = {"kind": "tokenize", "config": config.to_dict(), "fingerprint": fingerprint}
    with (
        writer_lease(fs, layout, run_id, "semtok tokenize", stream) as lease,
        recorded_run(fs, layout, summary, started, stream, record, lease=lease),
    ):
        plan = stream_remaining(config, fs, layout)  # one manifest read: one GET once compacted
        print(
            f"[semtok] output {redact_uri(layout.version_url)}: {len(plan.manifest)} units committed; "
            "listing the input",
            file=stream,
            flush=True,
        )
        feed = UnitFeed(
            plan, limit=ROUND_UNITS, max_files=ROUND_FILES, on_end=lambda: _report_plan(plan, layout, stream)
        )
        try:
            if feed.wait_any():  # nothing to do: no cluster is started
                execute_units(config, feed, fs, layout, fingerprint, summary, stream, lease=lease)
        finally:
            feed.close()
        summary.units_planned, summary.units_skipped = plan.yielded, plan.skipped
        if not plan.planned and not plan.manifest:
            print(
                f"[semtok] input {redact_uri(config.input)} holds no {config.input_kind} audio "
                "items (nothing to do): check the URL, --input-kind and --glob",
                file=stream,
                flush=True,
            )
            return summary
        # WebDataset twins of committed units a rerun now asks for (units redone above have theirs).
        twins = missing_twins(plan.manifest, config.formats, skip=set(plan.changed))
        if twins:
            print(
                f"[semtok] {len(twins)} committed unit(s) lack the requested WebDataset twin: writing "
                "it from their tokens",
                file=stream,
                flush=True,
            )
        elif not plan.yielded:
            print(
                f"[semtok] nothing to do: every unit is committed with {', '.join(config.formats)}",
                file=stream,
                flush=True,
            )
        whole = plan.full_entries(twins) if twins else {}  # `plan.manifest` holds slim copies
        for unit_id in twins:
            lease.check()
            entry = with_retries(
                functools.partial(add_webdataset_twin, fs, layout, unit_id, whole[unit_id], fingerprint),
                **COMMIT_RETRIES,
            )
            plan.manifest[unit_id] = entry
        compact_when_due(fs, layout, lease, run_id, stream)
        with_retries(lambda: write_dataset_card(fs, layout, fingerprint))
    print(f"[semtok] done: {summary.line()}", file=stream, flush=True)
    print(f"[semtok] run record: {redact_uri(layout.run_path(run_id))}", file=stream, flush=True)
    _check_error_budget(config, summary)
    return summary


def _report_plan(plan: PlanStream, layout: OutputLayout, stream: TextIO) -> None:
    """What this run does, once the listing has ended: units, damaged entries, changed and deleted
    inputs (printed from the planning thread, while the first units may already be encoding)."""
    print(
        f"[semtok] output {redact_uri(layout.version_url)}: {plan.yielded} units to do, "
        f"{plan.skipped} already committed",
        file=stream,
        flush=True,
    )
    for path, why in list(plan.damaged.items())[:5]:
        print(
            f"[semtok] damaged manifest entry {path} ({why}): its unit counts as not committed "
            "and is done again",
            file=stream,
            flush=True,
        )
    if plan.changed:
        print(
            f"[semtok] {len(plan.changed)} committed unit(s) read inputs that changed since: "
            "tokenizing them again",
            file=stream,
            flush=True,
        )
    if plan.deleted_uris:
        print(
            f"[semtok] {len(plan.deleted_uris)} committed input file(s) are gone from the input; "
            "their rows stay (`semtok verify --input` lists them)",
            file=stream,
            flush=True,
        )


class UnitFeed:
    """A unit iterator run in a background thread, at most `limit` units and `max_files` files
    (a unit weighs `len(unit.uris)`) ahead of its consumer.

    Why: listing millions of input objects takes minutes. The plan streams (`PlanStream`); this
    keeps listing while the consumer encodes the units already listed, with bounded memory.
    `on_end` runs in the thread once the iterator is exhausted; an error of the iterator is raised
    to the consumer after the units listed before it."""

    def __init__(
        self,
        units: Iterable[InputUnit],
        *,
        limit: int,
        max_files: int | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self._units, self._limit, self._on_end = iter(units), max(1, limit), on_end
        self._max_files = max_files
        self._queue: deque[InputUnit] = deque()
        self._files = 0  # files of the queued units
        self._cond = threading.Condition()
        self._ended = self._stop = False
        self._error: BaseException | None = None
        self.produced = 0
        self._thread = threading.Thread(target=self._run, name="semtok-plan", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for unit in self._units:
                with self._cond:
                    while self._full(self._limit, self._max_files) and not self._stop:
                        self._cond.wait(0.5)
                    if self._stop:
                        return
                    self._queue.append(unit)
                    self._files += len(unit.uris)
                    self.produced += 1
                    self._cond.notify_all()
            if self._on_end is not None:
                self._on_end()
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            with self._cond:
                self._error = error
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    @property
    def total(self) -> int | None:
        """How many units the iterator yielded, once it has ended (None before)."""
        return self.produced if self._ended and self._error is None else None

    def wait_any(self) -> bool:
        """True once a unit is waiting; False when the iterator ended empty (or raises its error)."""
        with self._cond:
            while not self._queue and not self._ended:
                self._cond.wait(0.5)
            if not self._queue and self._error is not None:
                raise self._error
            return bool(self._queue)

    def _full(self, limit: int, max_files: int | None) -> bool:
        queued = len(self._queue)
        return queued >= limit or (max_files is not None and queued > 0 and self._files >= max_files)

    def take(
        self, n: int, *, max_files: int | None = None, wait_s: float = 0.0, wait_first: bool = True
    ) -> list[InputUnit]:
        """Up to `n` units holding at most `max_files` files (at least one unit, however large):
        waits for the first one (unless not `wait_first`), then up to `wait_s` for a full batch;
        [] at the end."""
        deadline: float | None = None
        with self._cond:
            while not self._full(n, max_files) and not self._ended:
                if not self._queue and not wait_first:
                    break
                if self._queue:
                    deadline = deadline if deadline is not None else time.monotonic() + wait_s
                    if time.monotonic() >= deadline:
                        break
                self._cond.wait(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))
            batch, files = pop_units(self._queue, n, max_files)
            self._files -= files
            self._cond.notify_all()
            if not batch and self._error is not None:
                raise self._error
            return batch

    def close(self) -> None:
        """Stop the listing thread at its next unit (it is a daemon: an exit never waits for it)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()


def pop_units(queue: deque[InputUnit], n: int, max_files: int | None) -> tuple[list[InputUnit], int]:
    """Up to `n` units from the front of `queue` holding at most `max_files` files (a unit weighs
    its URIs; the first unit goes however large), and how many files they hold."""
    batch: list[InputUnit] = []
    files = 0
    while queue and len(batch) < n:
        weight = len(queue[0].uris)
        if batch and max_files is not None and files + weight > max_files:
            break
        batch.append(queue.popleft())
        files += weight
    return batch, files


def missing_twins(
    manifest: Mapping[str, Mapping[str, Any]], formats: Sequence[str], *, skip: set[str]
) -> list[str]:
    """Committed units without the WebDataset twin a rerun now asks for (units with no token rows
    have none by design)."""
    if "webdataset" not in formats:
        return []
    return sorted(
        unit_id
        for unit_id, entry in manifest.items()
        if unit_id not in skip
        and int(entry.get("n_tokens_rows") or 0) > 0
        and not any(f.get("kind") == "webdataset" for f in entry.get("files") or ())
    )


def compact_when_due(
    fs: Any,
    layout: OutputLayout,
    lease: OutputLease,
    run_id: str,
    stream: TextIO,
    *,
    min_loose: int | None = None,
) -> None:
    """Fold the manifest's entry files into an index once `COMPACT_MIN_LOOSE` of them exist
    (pipeline/dataset/compaction.py), so the next rerun, verify, status and loader GET one file.
    A storage failure here is a warning: the commits stand, and the next run (or `semtok compact`)
    folds them; every step of a compaction is safe to interrupt."""
    threshold = COMPACT_MIN_LOOSE if min_loose is None else min_loose
    try:
        result = with_retries(
            lambda: compact_manifest(fs, layout, lease=lease, min_loose=threshold, run_id=run_id)
        )
    except LeaseLost:
        raise
    except Exception as error:  # noqa: BLE001 - compaction is an optimisation, never a failed run
        print(
            f"[semtok] WARNING: manifest compaction skipped ({type(error).__name__}: "
            f"{redact_text(str(error))[:200]}); `semtok compact` retries it",
            file=stream,
            flush=True,
        )
        return
    if result.seq is not None:
        print(f"[semtok] manifest compacted: {result.line()}", file=stream, flush=True)


@contextlib.contextmanager
def writer_lease(
    fs: Any, layout: OutputLayout, run_id: str, command: str, stream: TextIO
) -> Iterator[OutputLease]:
    """Hold the output version's writer lease (see pipeline/dataset/lease.py) around a run's writes."""
    lease = acquire_lease(fs, layout, run_id, command=command)
    if lease.took_over_from is not None:
        print(
            f"[semtok] took over a stale output lease of run {lease.took_over_from.run_id}",
            file=stream,
            flush=True,
        )
    try:
        yield lease
    finally:
        lease.release()


@contextlib.contextmanager
def recorded_run(
    fs: Any,
    layout: OutputLayout,
    summary: RunSummary,
    started: float,
    stream: TextIO,
    record: dict[str, Any],
    *,
    lease: OutputLease | None = None,
) -> Iterator[None]:
    """Write the run record however the body ends, with `status` completed, failed or interrupted;
    on success also clean up what interrupted attempts left in `_tmp/` (we hold the lease)."""
    status, error_line = "completed", ""
    try:
        yield
    except Interrupted as stop:
        status, error_line = "interrupted", stop.signal_name
        raise
    except BaseException as error:
        status, error_line = "failed", redact_text(f"{type(error).__name__}: {str(error)[:500]}")
        # Committed units stay committed (and are skipped by a rerun); nothing else is visible.
        print(
            f"[semtok] FAILED after {summary.units_committed} of {summary.units_planned} units "
            f"committed: {error_line}\n[semtok] the output is consistent; rerun the same command "
            "to resume (committed units are skipped)",
            file=stream,
            flush=True,
        )
        raise
    finally:
        summary.wall_seconds = time.monotonic() - started
        summary.finished_at = utc_now_iso()
        full = {
            **record,
            "status": status,
            **({"error": error_line} if error_line else {}),
            **summary.to_dict(),
        }
        try:
            if status == "completed":
                with_retries(lambda: cleanup_tmp(fs, layout, lease=lease))
            with_retries(lambda: write_run_record(fs, layout, summary.run_id, full))
        except Exception as record_error:  # noqa: BLE001 - never hide the run's own error
            if status == "completed":
                raise
            log.warning("could not write the run record: %s", type(record_error).__name__)


def execute_units(
    config: TokenizeConfig,
    units: Iterable[InputUnit] | UnitFeed,
    fs,
    layout: OutputLayout,
    fingerprint: dict[str, Any],
    summary: RunSummary,
    stream: TextIO,
    *,
    prepare_cls: type[PrepareUnit] = PrepareUnit,
    only_items: Mapping[str, Sequence[str]] | None = None,
    transform: Callable[[FinishedUnit], FinishedUnit] | None = None,
    lease: OutputLease | None = None,
    output_options: Mapping[str, Any] | None = None,
) -> None:
    """Encode `units` and commit each finished unit (after `transform`, e.g. a merge) through the
    committer actors (pipeline/tokenize/commit_stage.py); the caller holds the writer lease.

    `units` may be a streaming plan (`UnitFeed` over `PlanStream`): it is encoded in rounds of up
    to ROUND_FILES files and ROUND_UNITS units (one Ray Data execution each) while the listing goes
    on. The driver only routes block references and counts reports: units of a round that no
    report names (their committer was lost with its node) are encoded again in a later round, up
    to MAX_UNIT_ROUNDS times. `output_options` are the output's storage options (default: the
    config's)."""
    import ray

    init_ray(config.ray_address)
    resources = plan_resources(config, ray.cluster_resources())
    summary.resources = dict(resources.__dict__)
    committers = config.committers or _default_committers(fs, resources)
    summary.resources["committers"] = committers
    print(
        f"[semtok] encoding on {resources.num_encoders} {resources.device} replica(s)"
        f"{' (the pool follows the cluster)' if resources.min_encoders is not None else ''}, "
        f"{resources.batch_segments} segments per batch; {committers} committer(s)",
        file=stream,
        flush=True,
    )
    feed = units if isinstance(units, UnitFeed) else UnitFeed(units, limit=ROUND_UNITS, max_files=ROUND_FILES)
    progress = _Progress(stream, config.progress_interval_s, None)
    metrics = JobMetrics(layout.version)
    make = _committer_factory(
        config,
        fs,
        layout,
        fingerprint,
        summary.run_id,
        count=committers,
        transform=transform,
        output_options=config.storage_options if output_options is None else output_options,
        lease=LeaseGuard(lease.run_id, lease.nonce) if lease is not None else None,
    )

    def lost(index: int, why: str) -> None:
        print(
            f"[semtok] committer {index} was lost ({why}): a new one takes its place; the units it "
            "held are encoded again",
            file=stream,
            flush=True,
        )

    done_ids: set[str] = set()  # units reported committed in the current round

    def record(reports: Iterable[CommitReport]) -> None:
        for report in reports:
            if report.error:
                raise RuntimeError(f"committing unit {report.unit_id} failed: {report.error}")
            if report.unit_id in done_ids:
                continue  # committed twice in a round (rows redelivered to a new committer): once
            _count(summary, report, metrics)
            done_ids.add(report.unit_id)

    pool = CommitterPool(committers, make, on_lost=lost)
    again: deque[InputUnit] = deque()  # units of earlier rounds that no report named
    rounds_of: dict[str, int] = {}
    taken = rounds = 0
    try:
        while True:
            round_units, files = pop_units(again, ROUND_UNITS, ROUND_FILES)
            if len(round_units) < ROUND_UNITS and files < ROUND_FILES:
                round_units += feed.take(
                    ROUND_UNITS - len(round_units),
                    max_files=ROUND_FILES - files,
                    wait_s=0.0 if round_units else ROUND_WAIT_S,
                    wait_first=not round_units,
                )
            if not round_units:
                break
            rounds += 1
            taken += sum(1 for unit in round_units if unit.unit_id not in rounds_of)
            summary.units_planned = max(summary.units_planned, taken)
            progress.total = feed.total
            if rounds > 1:
                print(
                    f"[semtok] round {rounds}: {len(round_units)} more units "
                    f"({taken} so far{'' if feed.total is None else f' of {feed.total}'})",
                    file=stream,
                    flush=True,
                )
            done_ids.clear()
            pool.begin_round()
            dataset = build_tokenize_dataset(
                config,
                round_units,
                resources,
                prepare_cls=prepare_cls,
                only_items=only_items,
                run_id=summary.run_id,
            )
            waiting: list[Any] = []  # block references not handed over yet
            since = time.monotonic()
            for bundle in dataset.iter_internal_ref_bundles():
                if lease is not None:
                    lease.check()  # a run that lost its lease (taken over as stale) must not write on
                waiting += bundle.block_refs
                if len(waiting) >= BLOCKS_PER_CALL or time.monotonic() - since >= BLOCKS_WAIT_S:
                    record(pool.send(waiting))
                    waiting, since = [], time.monotonic()
                else:
                    record(pool.poll())
                progress.total = feed.total
                progress.update(summary)
            if waiting:
                record(pool.send(waiting))
            reports, unfinished = pool.finish_round()
            record(reports)
            missing = [unit for unit in round_units if unit.unit_id not in done_ids]
            if missing:
                _redo(missing, rounds_of, again, stream, unfinished=unfinished, lost=pool.lost)
    except LeaseLost:
        pool.close()  # another run holds the output now: not one more write
        raise
    except BaseException:
        pool.drain(DRAIN_S)  # a failed commit or a stop: let the other commits in flight land
        raise
    finally:
        pool.close()
        if feed is not units:
            feed.close()
    progress.total = feed.total
    progress.update(summary, force=True)


# How long a run that fails or is stopped waits for the commits already handed to committers.
DRAIN_S = 20.0
# A unit of a round that no committer reported (its committer was lost) is encoded again, at most
# this many rounds in all; a unit that never finishes fails the job (rerunning resumes it).
MAX_UNIT_ROUNDS = 3


def _redo(
    missing: list[InputUnit],
    rounds_of: dict[str, int],
    again: deque[InputUnit],
    stream: TextIO,
    *,
    unfinished: int,
    lost: int,
) -> None:
    """Queue a round's unreported units for another round, or fail once one has had its rounds."""
    for unit in missing:
        rounds_of[unit.unit_id] = rounds_of.get(unit.unit_id, 1) + 1
    spent = [unit.unit_id for unit in missing if rounds_of[unit.unit_id] > MAX_UNIT_ROUNDS]
    if spent:
        raise RuntimeError(
            f"{len(spent)} unit(s) never finished in {MAX_UNIT_ROUNDS} rounds (e.g. {spent[0]}): "
            f"the stream ended before all their rows arrived ({unfinished} unfinished at the last "
            f"round's end, {lost} committer(s) lost in the run)"
        )
    print(
        f"[semtok] {len(missing)} unit(s) were not committed in this round "
        f"({lost} committer(s) lost so far, {unfinished} unit(s) left unfinished): encoding them again",
        file=stream,
        flush=True,
    )
    again.extend(missing)


def _default_committers(fs: Any, resources: Resources) -> int:
    """One committer per 8 encoders (each commits ~10k items/s, bench/pipeline_throughput.py
    `driver`), at most 8; a local output has one, on the driver's node (other nodes can't see it)."""
    if is_local(fs):
        return 1
    return max(1, min(8, math.ceil(resources.num_encoders / 8)))


def _committer_factory(
    config: TokenizeConfig,
    fs: Any,
    layout: OutputLayout,
    fingerprint: Mapping[str, Any],
    run_id: str,
    *,
    count: int,
    transform: Callable[[FinishedUnit], FinishedUnit] | None,
    output_options: Mapping[str, Any],
    lease: LeaseGuard | None,
) -> Callable[[int], Any]:
    """`make(index)` for `CommitterPool`: committers take no CPU from the stages (like the driver
    they wait on storage); a local output's stay on the driver's node, an object store's spread."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if is_local(fs):
        node = ray.get_runtime_context().get_node_id()
        placement: Any = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
    else:
        placement = "SPREAD"
    actor_cls = ray.remote(UnitCommitter).options(
        num_cpus=0, max_restarts=0, scheduling_strategy=placement, name=None
    )
    options = worker_storage_options(layout.root_url, dict(output_options))
    # A relative local output is the driver's: committers run with another working directory.
    root = layout.root_url if "://" in layout.root_url else os.path.abspath(layout.root_url)

    def make(index: int) -> Any:
        return actor_cls.remote(
            index,
            count,
            output=root,
            storage_options=options,
            version=layout.version,
            fingerprint=fingerprint,
            formats=config.formats,
            run_id=run_id,
            threads=config.commit_threads,
            transform=transform,
            lease=lease,
        )

    return make


def _count(summary: RunSummary, report: CommitReport, metrics: JobMetrics) -> None:
    summary.units_committed += 1
    summary.items += report.items_ok + report.items_failed
    summary.items_ok += report.items_ok
    summary.items_failed += report.items_failed
    summary.audio_seconds += report.audio_seconds
    for reason, count in report.reasons.items():
        summary.errors_by_reason[reason] = summary.errors_by_reason.get(reason, 0) + count
    metrics.unit_finished(report.audio_seconds, report.items_ok, report.reasons)
    metrics.unit_committed()


def _check_error_budget(config: TokenizeConfig, summary: RunSummary) -> None:
    if config.max_error_fraction is None or not summary.items:
        return
    fraction = summary.items_failed / summary.items
    if fraction > config.max_error_fraction:
        raise RuntimeError(
            f"{summary.items_failed} of {summary.items} items failed "
            f"({fraction:.1%} > max_error_fraction {config.max_error_fraction:.1%}); "
            f"see the errors table under {summary.output}"
        )
