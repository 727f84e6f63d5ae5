"""Stage 3 on the cluster: committer actors assemble encoded rows into units and commit them.

Why not on the driver: every token row would pass through one Python process, and there Ray
Data's batch iterator, not our code, took 92 % of the CPU (bench/cluster_scale.py, py-spy). So the
driver takes the encode stage's output as block *references* (`Dataset.iter_internal_ref_bundles`,
no block is fetched) and hands each to every committer. Committer k keeps the rows of the units
whose id hashes to k (`owner_of`), so each unit is assembled in one place (`UnitAssembler`),
commits finished units on its own threads (`commit_unit`: data first, the manifest entry last)
and answers with one small `CommitReport` per unit. The driver opens no block and writes no file.

A committer that dies (its node lost) takes its half-assembled units with it. `CommitterPool`
starts a replacement, and the driver encodes the units of that round that no report names again
in a later round (pipeline/tokenize/job.py). A commit is idempotent (same final names), so a unit
committed whose report was lost is committed again, never added twice. Committers check the
output's lease themselves (`LeaseGuard`): once another run holds it, they commit nothing more.

    pool = CommitterPool(2, make_actor)           # make_actor(index) -> an actor handle
    pool.begin_round()
    for bundle in dataset.iter_internal_ref_bundles():
        reports += pool.send(bundle.block_refs)   # every committer gets every block
    done, unfinished = pool.finish_round()
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dataset.commit import commit_unit
from pipeline.dataset.layout import OutputLayout
from pipeline.io.storage import open_filesystem, redact_text, with_retries
from pipeline.tokenize.assemble import FinishedUnit, UnitAssembler

log = logging.getLogger(__name__)

__all__ = ["CommitReport", "CommitterPool", "LeaseGuard", "UnitCommitter", "commit_finished", "owner_of"]

# A failed commit fails the job, so commits wait out a storage outage of ~half a minute.
COMMIT_RETRIES: dict[str, Any] = {"attempts": 8, "max_delay": 30.0}
# Calls in flight per committer before the driver waits: bounds the blocks held for committers.
CALLS_IN_FLIGHT = 4
# A committer re-reads the output's lease record at most this often (one small GET), before commits.
LEASE_CHECK_S = 5.0
# Committers replaced in one run before the run gives up (they keep dying: e.g. cannot start).
MAX_LOST_PER_COMMITTER = 3
# Blocks the driver hands over per call: a call costs the driver about the same for 1 block or 16
# (bench/pipeline_throughput.py route), so it batches references, up to BLOCKS_WAIT_S old.
BLOCKS_PER_CALL = 16
BLOCKS_WAIT_S = 0.5


@dataclass(frozen=True)
class CommitReport:
    """What one finished unit added to the output (counted before any `transform`)."""

    unit_id: str
    items_ok: int
    items_failed: int
    audio_seconds: float
    reasons: dict[str, int] = field(default_factory=dict)
    error: str = ""  # the commit failed after its retries: the job fails (a rerun resumes)

    @classmethod
    def of(cls, finished: FinishedUnit, error: str = "") -> CommitReport:
        reasons: dict[str, int] = {}
        for row in finished.error_rows:
            reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
        return cls(
            finished.unit.unit_id,
            len(finished.token_rows),
            len(finished.error_rows),
            finished.audio_seconds,
            reasons,
            error,
        )


class LeaseGuard:
    """A committer's check that its run still holds the output's writer lease: the lock record
    (`_lock.json`) must still carry this run's nonce. Read at most every LEASE_CHECK_S; a run
    whose lease was taken over (it looked dead: e.g. a storage outage stopped its heartbeat) must
    not write on, even with commits queued on committers the driver cannot reach in time."""

    def __init__(self, run_id: str, nonce: str) -> None:
        self.run_id, self.nonce = run_id, nonce
        self._checked = float("-inf")

    def check(self, fs: Any, layout: OutputLayout) -> None:
        from pipeline.dataset.lease import LeaseLost, read_lease

        if time.monotonic() - self._checked < LEASE_CHECK_S:
            return
        holder = with_retries(lambda: read_lease(fs, layout))
        if holder is None or holder.record.get("nonce") != self.nonce:
            who = "nobody" if holder is None else holder.describe()
            raise LeaseLost(f"the output's lease of run {self.run_id} is now held by {who}: not committing")
        self._checked = time.monotonic()


def owner_of(unit_id: str, count: int) -> int:
    """The committer that assembles `unit_id`: stable across processes (crc32, not `hash`)."""
    return zlib.crc32(unit_id.encode()) % count if count > 1 else 0


def commit_finished(
    fs: Any,
    layout: OutputLayout,
    finished: FinishedUnit,
    *,
    fingerprint: Mapping[str, Any],
    formats: Sequence[str],
    run_id: str,
) -> None:
    """Commit one assembled unit (retrying storage errors): a committer's work per unit, which
    bench/pipeline_throughput.py `driver` measures."""
    info = {**finished.unit.to_dict(), "n_items": len(finished.token_rows) + len(finished.error_rows)}
    with_retries(
        lambda: commit_unit(
            fs,
            layout,
            finished.unit.unit_id,
            token_rows=finished.token_rows,
            error_rows=finished.error_rows,
            fingerprint=fingerprint,
            formats=formats,
            unit_info=info,
            run_id=run_id,
        ),
        **COMMIT_RETRIES,
    )


class UnitCommitter:
    """One committer (run as a Ray actor): assembles and commits the units `owner_of` gives it.

    `transform` (picklable) rewrites a finished unit before its commit, e.g. retry-failed's merge
    with what is committed; `lease` is checked before each commit. Commits run on `threads`
    threads, so storage latency never stalls assembly; `add` waits once 4 × `threads` commits are
    queued, which backs the driver off."""

    def __init__(
        self,
        index: int,
        count: int,
        *,
        output: str,
        storage_options: Mapping[str, Any],
        version: str,
        fingerprint: Mapping[str, Any],
        formats: Sequence[str],
        run_id: str,
        threads: int = 8,
        transform: Callable[[FinishedUnit], FinishedUnit] | None = None,
        lease: LeaseGuard | None = None,
    ) -> None:
        self.index, self.count = index, count
        self._lease = lease
        self._fs, _ = open_filesystem(output, dict(storage_options))
        self._layout = OutputLayout(output.rstrip("/"), version)
        self._fingerprint, self._formats, self._run_id = dict(fingerprint), tuple(formats), run_id
        self._transform = transform
        self._threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="semtok-commit")
        self._pending: list[Future[CommitReport]] = []
        self._assembler = UnitAssembler()

    def begin_round(self) -> int:
        """Forget the last round's rows (its commits were drained by `finish_round`)."""
        self._assembler = UnitAssembler()
        return self.index

    def add(self, blocks: Sequence[Any]) -> list[CommitReport]:
        """Take this committer's rows of some encoded blocks (or references to them); reports of
        the commits done since."""
        import ray

        for block in blocks:
            self._add_block(ray.get(block) if isinstance(block, ray.ObjectRef) else block)
        return self._collect(wait=False)

    def _add_block(self, block: Any) -> None:
        from ray.data.block import BlockAccessor

        if self.count > 1:
            block = self._mine(BlockAccessor.for_block(block).to_arrow())
            if block.num_rows == 0:
                return
        batch: dict[str, np.ndarray] = BlockAccessor.for_block(block).to_batch_format("numpy")
        for finished in self._assembler.add(batch):
            self._pending.append(self._pool.submit(self._commit, finished))
        limit = 4 * self._threads
        if len(self._pending) > limit:
            concurrent.futures.wait(self._pending[: len(self._pending) - limit])

    def _mine(self, table: pa.Table) -> pa.Table:
        """This committer's rows of a block, chosen in Arrow before any conversion: every
        committer sees every block, so converting whole blocks would cost each of them the whole
        stream. Owners are hashed once per distinct unit id (a block holds few)."""
        ids = pc.dictionary_encode(table.column("unit_id").combine_chunks())
        owners = np.fromiter(
            (owner_of(str(u), self.count) for u in ids.dictionary.to_pylist()),
            dtype=np.int64,
            count=len(ids.dictionary),
        )
        indices = ids.indices.to_numpy(zero_copy_only=False)
        return table.filter(pa.array(owners[indices] == self.index))

    def finish_round(self) -> tuple[list[CommitReport], int]:
        """Wait for every queued commit: their reports, and how many units never finished."""
        reports = self._collect(wait=True)
        if self._assembler.redelivered:
            log.warning("ignored %d redelivered row(s) of finished units", self._assembler.redelivered)
        return reports, self._assembler.pending

    def _commit(self, finished: FinishedUnit) -> CommitReport:
        try:
            if self._lease is not None:
                self._lease.check(self._fs, self._layout)
            unit = self._transform(finished) if self._transform is not None else finished
            commit_finished(
                self._fs,
                self._layout,
                unit,
                fingerprint=self._fingerprint,
                formats=self._formats,
                run_id=self._run_id,
            )
        except Exception as error:  # noqa: BLE001 - reported to the driver, which fails the job
            return CommitReport.of(finished, redact_text(f"{type(error).__name__}: {str(error)[:300]}"))
        return CommitReport.of(finished)

    def _collect(self, *, wait: bool) -> list[CommitReport]:
        if wait:
            concurrent.futures.wait(self._pending)
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        return [f.result() for f in done]


class CommitterPool:
    """The driver's side of the committers: routes block references, gathers reports, and
    replaces a committer that died (`lost` counts them; the round's unreported units are redone).

    `make(index)` starts committer `index` (a Ray actor handle of `UnitCommitter`); `on_lost`
    hears of each replacement (index, why)."""

    def __init__(
        self,
        count: int,
        make: Callable[[int], Any],
        *,
        on_lost: Callable[[int, str], None] | None = None,
    ) -> None:
        self.count = count
        self._make = make
        self._on_lost = on_lost
        self._actors = [make(index) for index in range(count)]
        self._calls: dict[Any, tuple[int, Any]] = {}  # call → (committer index, its actor)
        self.lost = 0

    def begin_round(self) -> None:
        import ray

        for index, actor in enumerate(list(self._actors)):
            try:
                ray.get(actor.begin_round.remote())
            except ray.exceptions.RayActorError as error:
                self._replace(index, actor, error)  # a new committer starts empty

    def send(self, block_refs: Sequence[Any]) -> list[CommitReport]:
        """Hand some blocks to every committer, in one call each (a call costs the driver ~0.5 ms
        whatever it carries: `BLOCKS_PER_CALL`); reports of calls that finished meanwhile."""
        reports = self.poll(limit=CALLS_IN_FLIGHT * self.count)
        refs = list(block_refs)
        for index, actor in enumerate(self._actors):
            self._calls[actor.add.remote(refs)] = (index, actor)
        return reports

    def poll(self, *, limit: int | None = None) -> list[CommitReport]:
        """Reports of the calls that are done; with `limit`, first wait until at most `limit` are
        in flight."""
        import ray

        if not self._calls:
            return []
        wanted = 0 if limit is None else max(0, len(self._calls) - limit)
        ready, _ = ray.wait(list(self._calls), num_returns=max(1, wanted), timeout=None if wanted else 0)
        reports: list[CommitReport] = []
        for call in ready:
            index, actor = self._calls.pop(call)
            try:
                reports.extend(ray.get(call))
            except ray.exceptions.RayActorError as error:
                self._replace(index, actor, error)
        return reports

    def finish_round(self) -> tuple[list[CommitReport], int]:
        """Every call's reports, then each committer's last commits; and how many units the live
        committers hold unfinished (a lost committer's units show as unreported instead)."""
        import ray

        reports: list[CommitReport] = []
        while self._calls:
            reports.extend(self.poll(limit=0))
        unfinished = 0
        for index, actor in enumerate(list(self._actors)):
            try:
                done, pending = ray.get(actor.finish_round.remote())
            except ray.exceptions.RayActorError as error:
                self._replace(index, actor, error)
                continue
            reports.extend(done)
            unfinished += pending
        return reports, unfinished

    def drain(self, timeout_s: float) -> None:
        """Let the committers finish what they were handed, for up to `timeout_s` (a run ending on
        an error or a stop): a recommit cut between its data and its manifest entry would leave
        the unit's old entry naming new data until a rerun recommits it."""
        import ray

        deadline = time.monotonic() + timeout_s
        try:
            if self._calls:
                ray.wait(list(self._calls), num_returns=len(self._calls), timeout=timeout_s)
            calls = [actor.finish_round.remote() for actor in self._actors]
            ray.wait(calls, num_returns=len(calls), timeout=max(0.0, deadline - time.monotonic()))
        except Exception as error:  # noqa: BLE001 - best effort on the way out
            log.warning("committers not drained: %s", type(error).__name__)

    def close(self) -> None:
        """Stop every committer now (after `finish_round` or `drain`: nothing is in flight, or
        the lease is lost and nothing more may be written)."""
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._calls.clear()

    def _replace(self, index: int, actor: Any, error: BaseException) -> None:
        """Start a new committer `index`, once per death (every call in flight fails with it)."""
        import ray

        if self._actors[index] is not actor:
            return  # already replaced
        self.lost += 1
        why = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}"
        if self.lost > MAX_LOST_PER_COMMITTER * self.count:
            raise RuntimeError(f"{self.lost} committers were lost in this run, the last with {why}")
        if self._on_lost is not None:
            self._on_lost(index, why)
        ray.kill(actor)
        self._actors[index] = self._make(index)
