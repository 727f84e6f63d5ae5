"""Test-only fault injection into the tokenize job's encode and commit stages; production code has
no test hooks.

`FaultyEncodeActor` and `FaultyUnitCommitter` are the real `EncodeActor` and `UnitCommitter` plus
faults chosen by the environment variables below (set on the CLI process; Ray workers inherit
them). `python -m tests.faults ARGS...` runs the real `semtok` CLI with these in place of the
production ones, so tests/test_faults.py can inject faults into a job running in its own process.
Ray workers load the classes by their module name: the repository root must be on their
PYTHONPATH (test_faults.cli_env sets it).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.tokenize import job
from pipeline.tokenize.commit_stage import CommitReport, UnitCommitter, owner_of
from pipeline.tokenize.encode_stage import EncodeActor
from pipeline.tokenize.prepare_stage import SEGMENT

log = logging.getLogger(__name__)

# "item_id,item_id": encoding a segment of these items always raises (they end as encode_failed
# error rows), until the variable is gone: the "bug" that `semtok retry-failed` recovers from.
FAIL_ITEMS_ENV = "SEMTOK_TEST_FAIL_ITEMS"
# "item_id": the actor PROCESS dies (os._exit) on the first batch holding that item. "First" is
# remembered in a marker file (CRASH_MARKER_ENV, created atomically before dying), because the
# restarted actor is a fresh process: Ray must redo the batch, and the item must end exactly once.
CRASH_ONCE_ENV = "SEMTOK_TEST_CRASH_ONCE_ITEM"
CRASH_MARKER_ENV = "SEMTOK_TEST_CRASH_MARKER"
# "item_id": the committer PROCESS that is handed the first block holding that item dies, once
# (marker file as above): the units it held half-assembled must be encoded again, exactly once.
COMMITTER_CRASH_ONCE_ENV = "SEMTOK_TEST_COMMITTER_CRASH_ONCE_ITEM"
COMMITTER_CRASH_MARKER_ENV = "SEMTOK_TEST_COMMITTER_CRASH_MARKER"


class FaultyEncodeActor(EncodeActor):
    """The production encode actor, failing or dying on the items the environment names."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _maybe_crash(batch, np.flatnonzero(batch["row_kind"] == SEGMENT))
        return super().__call__(batch)

    def _encode(self, batch: dict[str, np.ndarray], index: np.ndarray) -> list[bytes]:
        _maybe_fail_always(batch, index)
        return super()._encode(batch, index)


class FaultyUnitCommitter(UnitCommitter):
    """The production committer, dying on the first block that holds the item the environment names,
    if that item's unit is its own: it dies before taking the item's rows, so that unit is always
    left unreported (every committer sees every block; another's death might lose nothing)."""

    def add(self, blocks: Sequence[Any]) -> list[CommitReport]:
        import ray
        from ray.data.block import BlockAccessor

        target = os.environ.get(COMMITTER_CRASH_ONCE_ENV)
        for block in blocks:
            data = ray.get(block) if isinstance(block, ray.ObjectRef) else block
            batch = BlockAccessor.for_block(data).to_batch_format("numpy")
            owners = {
                owner_of(str(u), self.count)
                for i, u in zip(batch["item_id"], batch["unit_id"], strict=True)
                if str(i) == target
            }
            if target and self.index in owners:
                _die_once(os.environ.get(COMMITTER_CRASH_MARKER_ENV), f"committer {self.index}", target)
        return super().add(blocks)


def _maybe_fail_always(batch: dict[str, np.ndarray], index: np.ndarray) -> None:
    targets = {t for t in os.environ.get(FAIL_ITEMS_ENV, "").split(",") if t}
    hit = targets.intersection(str(batch["item_id"][i]) for i in index)
    if hit:
        raise RuntimeError(f"injected persistent test fault for item(s) {sorted(hit)}")


def _maybe_crash(batch: dict[str, np.ndarray], index: np.ndarray) -> None:
    target = os.environ.get(CRASH_ONCE_ENV)
    if target and any(batch["item_id"][i] == target for i in index):
        _die_once(os.environ.get(CRASH_MARKER_ENV), "encode actor", target)


def _die_once(marker: str | None, who: str, target: str) -> None:
    """Exit this process unless `marker` exists (then this is the redo); create it first."""
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # crashed once already: this is the redo
    os.write(fd, f"{os.getpid()}\n".encode())
    os.fsync(fd)
    os.close(fd)
    log.warning("injected test crash of %s pid %d on item %r", who, os.getpid(), target)
    os._exit(17)


def main(argv: Sequence[str] | None = None) -> int:
    """The `semtok` CLI, its tokenize stream built with `FaultyEncodeActor` and `FaultyUnitCommitter`."""
    from jobs import cli

    job.EncodeActor = FaultyEncodeActor  # the name build_tokenize_dataset builds its encode stage from
    job.UnitCommitter = FaultyUnitCommitter  # the name execute_units starts its committers from
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
