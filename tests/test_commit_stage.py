"""Committers: each unit is assembled and committed by exactly one committer, wherever its rows land.

The committers run here in-process (no Ray cluster): each is handed every block, as the driver
hands it every block reference, and must keep only the units `owner_of` gives it. The job-level
faults (a committer killed mid-job) are in tests/test_faults.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.dataset.commit import commit_unit
from pipeline.dataset.layout import OutputLayout, dataset_version
from pipeline.dataset.lease import acquire_lease
from pipeline.dataset.manifest import load_errors, load_tokens, read_manifest
from pipeline.io.storage import open_filesystem
from pipeline.records import InputUnit
from pipeline.tokenize import commit_stage
from pipeline.tokenize.assemble import FinishedUnit
from pipeline.tokenize.commit_stage import CommitReport, LeaseGuard, UnitCommitter, owner_of
from pipeline.tokenize.prepare_stage import ERROR, SEGMENT, UNIT, empty_row
from pipeline.tokenize.retry import _Merger, _Target
from tests.helpers import FINGERPRINT, token_row


def _block(rows: list[dict]) -> pa.Table:
    """An encode-stage output block (Ray Data stores them as Arrow tables)."""
    columns: dict[str, list] = {name: [] for name in empty_row()}
    for overrides in rows:
        for name, value in {**empty_row(), **overrides}.items():
            columns[name].append(value)
    return pa.table(columns)


def _unit_rows(unit_id: str, items: int) -> list[dict]:
    """Rows of a unit of `items` one-segment items; the last item fails to decode."""
    unit = InputUnit(unit_id, "files", tuple(f"file:///{unit_id}/{i}.wav" for i in range(items)))
    rows: list[dict] = [{"row_kind": UNIT, "unit_id": unit_id, "n_items": items, "unit": unit.to_json()}]
    for i in range(items):
        common = {"unit_id": unit_id, "item_index": i, "item_id": f"{unit_id}/{i}"}
        common["source_uri"] = unit.uris[i]
        if i == items - 1:
            rows.append({**common, "row_kind": ERROR, "stage": "decode", "reason": "undecodable"})
        else:
            tokens = np.arange(4, dtype=np.uint16) + i
            rows.append(
                {
                    **common,
                    "row_kind": SEGMENT,
                    "seg_index": 0,
                    "n_segments": 1,
                    "num_tokens": 2,
                    "duration_s": 0.5,
                    "tokens": tokens.tobytes(),
                }
            )
    return rows


def _round(committer: UnitCommitter, blocks: list[pa.Table]) -> tuple[list[CommitReport], int]:
    """Hand `blocks` to `committer` and finish the round: every report, whether `add` already
    collected it (a fast commit) or `finish_round` waited for it."""
    reports = committer.add(blocks)
    done, unfinished = committer.finish_round()
    return reports + done, unfinished


def _committers(out: Path, count: int, lease: LeaseGuard | None = None) -> list[UnitCommitter]:
    version = dataset_version(FINGERPRINT)
    return [
        UnitCommitter(
            index,
            count,
            output=str(out),
            storage_options={},
            version=version,
            fingerprint=FINGERPRINT,
            formats=("parquet",),
            run_id="test-run",
            threads=2,
            lease=lease,
        )
        for index in range(count)
    ]


@pytest.mark.parametrize("count", [1, 3])
def test_every_unit_is_committed_once_by_its_owner(tmp_path: Path, count: int) -> None:
    unit_ids = [f"u{n:02d}" for n in range(12)]
    rows = [row for unit_id in unit_ids for row in _unit_rows(unit_id, 3)]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(rows))  # rows of a unit arrive in any order, across blocks
    blocks = [_block([rows[i] for i in order[start : start + 5]]) for start in range(0, len(rows), 5)]
    committers = _committers(tmp_path / "out", count)
    reports: dict[int, list[CommitReport]] = {c.index: [] for c in committers}
    for block in blocks:
        for committer in committers:  # the driver hands every block to every committer
            reports[committer.index] += committer.add([block])
    for committer in committers:
        done, unfinished = committer.finish_round()
        reports[committer.index] += done
        assert unfinished == 0

    for index, mine in reports.items():
        assert {r.unit_id for r in mine} == {u for u in unit_ids if owner_of(u, count) == index}
    every = [r for mine in reports.values() for r in mine]
    assert sorted(r.unit_id for r in every) == unit_ids and not any(r.error for r in every)
    assert sum(r.items_ok for r in every) == 24 and sum(r.items_failed for r in every) == 12
    assert all(r.reasons == {"undecodable": 1} for r in every)

    fs, _ = open_filesystem(str(tmp_path / "out"))
    layout = OutputLayout(str(tmp_path / "out"), dataset_version(FINGERPRINT))
    assert sorted(read_manifest(fs, layout)) == unit_ids
    token_ids = load_tokens(fs, layout, columns=["id"]).column("id").to_pylist()
    error_ids = [row["id"] for row in load_errors(fs, layout).to_pylist()]
    assert sorted(token_ids + error_ids) == sorted(f"{u}/{i}" for u in unit_ids for i in range(3))


def test_a_unit_split_across_a_round_boundary_is_never_committed_half(tmp_path: Path) -> None:
    (committer,) = _committers(tmp_path / "out", 1)
    rows = _unit_rows("u1", 3)
    done, unfinished = _round(committer, [_block(rows[:2])])
    assert done == [] and unfinished == 1  # the driver redoes it in a later round
    committer.begin_round()
    done, unfinished = _round(committer, [_block(rows[:1]), _block(rows[1:])])
    assert [r.unit_id for r in done] == ["u1"] and unfinished == 0


def test_a_failed_commit_is_reported_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("a file where the output folder should be")
    (committer,) = _committers(blocker, 1)
    (report,), _ = _round(committer, [_block(_unit_rows("u1", 2))])
    assert report.unit_id == "u1" and report.error  # the driver fails the job with it


def test_owner_of_is_stable_and_spreads() -> None:
    ids = [f"shard-{n:05d}" for n in range(1000)]
    owners = [owner_of(u, 4) for u in ids]
    assert owners == [owner_of(u, 4) for u in ids]
    assert all(200 <= owners.count(k) <= 300 for k in range(4))
    assert {owner_of(u, 1) for u in ids} == {0}


def test_committers_stop_committing_once_another_run_holds_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver may be blocked while committers work through their queue: each checks the lock
    record itself, and commits nothing once it names another run (taken over as stale)."""
    monkeypatch.setattr(commit_stage, "LEASE_CHECK_S", 0.0)
    out = tmp_path / "out"
    fs, _ = open_filesystem(str(out))
    layout = OutputLayout.for_fingerprint(str(out), FINGERPRINT)
    ours = acquire_lease(fs, layout, "run-a", command="test", heartbeat=False)
    (committer,) = _committers(out, 1, LeaseGuard(ours.run_id, ours.nonce))
    (report,), _ = _round(committer, [_block(_unit_rows("u1", 2))])
    assert report.unit_id == "u1" and not report.error
    ours.release()
    theirs = acquire_lease(fs, layout, "run-b", command="test", heartbeat=False)
    (report,), _ = _round(committer, [_block(_unit_rows("u2", 2))])
    assert "run-b" in report.error and "not committing" in report.error
    assert sorted(read_manifest(fs, layout)) == ["u1"]  # u2 was never published
    theirs.release()


def test_a_retry_merge_done_twice_keeps_every_item_once(tmp_path: Path) -> None:
    """retry-failed's merge runs in the committers: when a committer is lost after its commit
    landed, the unit is encoded and merged again over the already merged tokens file."""
    out = str(tmp_path / "out")
    fs, _ = open_filesystem(out)
    layout = OutputLayout.for_fingerprint(out, FINGERPRINT)
    unit = InputUnit("u1", "files", ("file:///a.wav", "file:///b.wav", "file:///c.wav"))
    errors = [
        {
            "id": name,
            "source_uri": f"file:///{name}",
            "stage": "decode",
            "reason": "undecodable",
            "detail": "",
        }
        for name in ("b.wav", "c.wav")
    ]
    info = {**unit.to_dict(), "n_items": 3}
    tokens = [token_row("a.wav", source_uri="file:///a.wav")]
    commit_unit(
        fs, layout, "u1", token_rows=tokens, error_rows=errors, fingerprint=FINGERPRINT, unit_info=info
    )
    entry = read_manifest(fs, layout)["u1"]
    target = _Target(unit, unit, errors, {"b.wav", "c.wav"})
    merge = _Merger(layout, {}, {"u1": entry}, {"u1": target})
    still = {**errors[1], "stage": "encode", "reason": "encode_failed"}
    outcome = FinishedUnit(unit, [token_row("b.wav", source_uri="file:///b.wav")], [still])
    for _ in range(2):  # the second merge reads the tokens file the first one committed
        merged = merge(outcome)
        assert [r["id"] for r in merged.token_rows] == ["a.wav", "b.wav"]
        assert [(r["id"], r["reason"]) for r in merged.error_rows] == [("c.wav", "encode_failed")]
        commit_unit(
            fs,
            layout,
            "u1",
            token_rows=merged.token_rows,
            error_rows=merged.error_rows,
            fingerprint=FINGERPRINT,
            unit_info=info,
        )
    token_ids = load_tokens(fs, layout, columns=["id"]).column("id").to_pylist()
    assert sorted(token_ids) == ["a.wav", "b.wav"]
    assert [r["id"] for r in load_errors(fs, layout).to_pylist()] == ["c.wav"]


def test_a_committer_keeps_its_rows_of_a_block_in_several_chunks(tmp_path: Path) -> None:
    """Ray Data may hand a block whose columns are in several chunks (concatenated batches)."""
    rows = [row for unit_id in ("a", "b", "c", "d") for row in _unit_rows(unit_id, 2)]
    block = pa.concat_tables([_block(rows[:5]), _block(rows[5:])])
    assert block.column("unit_id").num_chunks == 2
    kept = {c.index: [r.unit_id for r in _round(c, [block])[0]] for c in _committers(tmp_path / "out", 2)}
    assert sorted(kept[0] + kept[1]) == ["a", "b", "c", "d"]
    assert all(owner_of(unit_id, 2) == index for index, ids in kept.items() for unit_id in ids)
