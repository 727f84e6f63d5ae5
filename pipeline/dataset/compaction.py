"""Compaction of a version's manifest: fold entry files into one index file, delete the copies.

Why: readers GET every entry file (`_manifest/<unit>.json`) they cannot find in an index; with
10⁵ units that is minutes per rerun on S3. Compaction writes the consolidated manifest
(`pipeline.dataset.manifest_index`) so reads cost one index GET plus a LIST.

When: at the end of each tokenize run, under its writer lease, once `COMPACT_MIN_LOOSE` entry
files exist (`compact_manifest(min_loose=…)`), and on demand with `semtok compact OUTPUT`
(`compact_output`, which takes the lease itself and writes a run record of kind "compact", shown
by `semtok status`). Only the lease holder compacts, so no commit races a deletion.

One pass, each step safe to be killed after (the test hook `on_step` injects those kills):
1. read the manifest as readers do (`read_manifest_report`: newest good index N + entry files);
2. publish index N' (one more than any seq present) holding every committed unit, each row
   stamped with the listing stamp of the entry file it copies; `publish` makes it appear whole;
3. delete the entry files that index N already held with the same stamp (now in N and N');
4. delete index files older than N, and damaged ones (N' supersedes them).
Invariant: a committed unit is held by at least two of {index N', index N, its entry file}: the
entry files folded by this pass stay until the next pass, like the commits behind a Delta Lake
checkpoint. So one damaged index loses nothing: readers fall back to N plus those entry files. A
kill between any two steps leaves files a reader merges to the same manifest (an entry file whose
stamp matches its index row is that row), and the next pass finishes the job. A unit recommitted
after compaction has a new entry file, which wins over its index row (see `manifest`).
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec

from pipeline.dataset.layout import OutputLayout, is_local, new_attempt_id, publish
from pipeline.dataset.lease import OutputLease, acquire_lease
from pipeline.dataset.manifest import list_manifest, read_manifest_report
from pipeline.dataset.manifest_index import IndexRow, encode_index, index_rel
from pipeline.dataset.run_records import utc_now_iso, write_run_record
from pipeline.dataset.versions import dataset_versions
from pipeline.io.storage import open_filesystem, redact_text, redact_uri, with_retries

__all__ = ["COMPACT_MIN_LOOSE", "Compaction", "compact_manifest", "compact_output"]

# End-of-run compaction once this many entry files exist: reading 256 entries costs ~1 s on S3.
COMPACT_MIN_LOOSE = 256
DELETE_BATCH = 1000  # S3 DeleteObjects takes up to 1,000 keys per request


@dataclass
class Compaction:
    """What one compaction pass did (`seq` None: nothing was due)."""

    version: str
    seq: int | None = None
    units: int = 0  # units in the new index
    folded: int = 0  # entry files copied into an index for the first time
    deleted_entries: int = 0
    deleted_indexes: list[str] = field(default_factory=list)
    loose_before: int = 0
    loose_after: int = 0
    damaged_entries: int = 0  # entry files left in place: their units are not committed
    note: str = ""

    def line(self) -> str:
        if self.seq is None:
            return f"{self.version}: {self.note or 'nothing to compact'}"
        return (
            f"{self.version}: index {index_rel(self.seq)} holds {self.units} units "
            f"({self.folded} newly folded); {self.deleted_entries} entry files and "
            f"{len(self.deleted_indexes)} old index file(s) removed; {self.loose_after} entry files "
            "remain" + (" (the newly folded stay until the next pass)" if self.folded else "")
        )


def _remove(fs: fsspec.AbstractFileSystem, paths: list[str]) -> None:
    """Delete files; already gone is fine. S3: one bulk DeleteObjects per batch (s3fs); local
    disks: unlinks on threads (one unlink waits on the journal, ~1 ms on a busy disk)."""
    if not paths:
        return

    def one(path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)

    if is_local(fs):
        with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
            list(pool.map(one, paths))
        return
    try:
        fs.rm(paths)
    except FileNotFoundError:
        for path in paths:
            one(path)


def compact_manifest(
    fs: fsspec.AbstractFileSystem,
    layout: OutputLayout,
    *,
    lease: OutputLease,
    min_loose: int = 0,
    run_id: str = "",
    on_step: Callable[[str], None] | None = None,
) -> Compaction:
    """One compaction pass over `layout`'s manifest (module doc), under the caller's `lease`.

    Does nothing unless at least `min_loose` entry files exist (known from one LIST; with
    `min_loose=0`, also when a damaged index is waiting to be superseded). `on_step(name)` is a
    test hook called after "read", "index" (published), each "entries" batch deleted, and
    "indexes" (old ones deleted): a test raises there to simulate a kill."""

    def step(name: str) -> None:
        if on_step is not None:
            on_step(name)

    lease.check()
    if min_loose > 0 and len(list_manifest(fs, layout)[0]) < min_loose:
        return Compaction(version=layout.version, note="nothing to compact")  # one LIST, no GET
    found = read_manifest_report(fs, layout)
    result = Compaction(
        version=layout.version, loose_before=len(found.loose), damaged_entries=len(found.damaged)
    )
    if len(found.loose) < max(min_loose, 1) and not found.damaged_index:
        result.loose_after, result.note = len(found.loose), "nothing to compact"
        return result
    if not found.entries:
        result.loose_after, result.note = len(found.loose), "no committed unit to compact"
        return result
    step("read")
    base = found.index_seq
    seq = max([*found.index_seqs, 0]) + 1
    rows = {unit: IndexRow(entry, found.stamps.get(unit, "")) for unit, entry in found.entries.items()}
    data = encode_index(rows, seq=seq, base=base, run_id=run_id)
    tmp_dir = layout.tmp_dir(new_attempt_id(run_id)) if is_local(fs) else None
    try:
        lease.check()
        publish(fs, layout.path(index_rel(seq)), data, tmp_dir=tmp_dir)
    finally:
        if tmp_dir is not None:
            with contextlib.suppress(FileNotFoundError):
                if fs.exists(tmp_dir):
                    fs.rm(tmp_dir, recursive=True)
    result.seq, result.units = seq, len(rows)
    result.folded = sum(1 for unit in found.entries if unit in found.loose and unit not in found.covered)
    step("index")
    # Entry files the base index held with the same stamp are now held twice (base and new).
    doomed = sorted(layout.manifest_path(unit) for unit in found.covered if unit in found.entries)
    for start in range(0, len(doomed), DELETE_BATCH):
        lease.check()
        _remove(fs, doomed[start : start + DELETE_BATCH])
        result.deleted_entries += len(doomed[start : start + DELETE_BATCH])
        step("entries")
    old = [s for s in found.index_seqs if s not in (seq, base)]  # older, or damaged and superseded
    if old:
        lease.check()
        _remove(fs, [layout.path(index_rel(s)) for s in old])
        result.deleted_indexes = [index_rel(s) for s in old]
    step("indexes")
    result.loose_after = len(found.loose) - result.deleted_entries
    return result


def compact_output(
    output: str,
    *,
    version: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    passes: int = 2,
) -> list[Compaction]:
    """`semtok compact`: compact every (or one) dataset version under `output`, each under its
    writer lease (`OutputBusy` while a run writes it). Up to `passes` passes per version: the
    second removes the entry files the first folded (both indexes then hold every unit), so a
    compacted version is read with one GET and an almost empty LIST."""
    fs, root_path = open_filesystem(output, storage_options)
    versions = dataset_versions(fs, root_path, version)
    if not versions:
        raise FileNotFoundError(f"no dataset version under {redact_uri(output)}")
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-compact-" + uuid.uuid4().hex[:8]
    done = []
    for name in versions:
        layout = OutputLayout(output.rstrip("/") or "/", name)
        with acquire_lease(fs, layout, run_id, command="semtok compact") as lease:
            passes_done: list[Compaction] = []
            with _compact_record(fs, layout, run_id, passes_done):
                for _ in range(max(1, passes)):
                    result = with_retries(
                        functools.partial(compact_manifest, fs, layout, lease=lease, run_id=run_id)
                    )
                    passes_done.append(result)
                    if result.seq is None or result.loose_after == 0:
                        break
            done.extend([p for p in passes_done if p.seq is not None] or passes_done[-1:])
    return done


@contextlib.contextmanager
def _compact_record(
    fs: fsspec.AbstractFileSystem, layout: OutputLayout, run_id: str, passes: list[Compaction]
) -> Iterator[None]:
    """Write `runs/<run_id>.json` (kind "compact") however the passes end, so `semtok status`
    lists the compaction among the runs: its passes, and the error of a failed one."""
    started_at, started = utc_now_iso(), time.monotonic()
    status, error_line = "completed", ""
    try:
        yield
    except BaseException as error:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        error_line = redact_text(f"{type(error).__name__}: {str(error)[:500]}")
        raise
    finally:
        record = {
            "kind": "compact",
            "status": status,
            **({"error": error_line} if error_line else {}),
            "started_at": started_at,
            "finished_at": utc_now_iso(),
            "wall_seconds": time.monotonic() - started,
            "summary": "; ".join(p.line() for p in passes) or "nothing done",
            "passes": [asdict(p) for p in passes],
        }
        try:
            with_retries(lambda: write_run_record(fs, layout, run_id, record))
        except Exception:  # noqa: BLE001 - never hide the compaction's own error
            if status == "completed":
                raise
