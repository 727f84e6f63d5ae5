"""`semtok status`: what has been done to an output — its runs, and what the manifest holds.

Why: on a cluster the driver's console is gone after the job; the run records (`runs/*.json`) and
the manifest are the durable history. Status reads only those (small JSON objects, no data files;
one index GET once the manifest is compacted), so it is cheap on any store. Totals come from the
manifest (the truth readers trust), not from adding up runs: a unit committed twice by racing
attempts counts once. Damaged manifest entries
and run records are listed, never fatal; a live writer lease says which run is writing now.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.lease import read_lease
from pipeline.dataset.manifest import read_manifest_report
from pipeline.dataset.run_records import read_run_records_report
from pipeline.dataset.versions import dataset_versions
from pipeline.io.storage import open_filesystem, redact_uri, with_retries

__all__ = ["OutputStatus", "RunStatus", "VersionStatus", "output_status"]


@dataclass
class RunStatus:
    """One run record, normalised (older records lack timestamps: derived from id and wall)."""

    run_id: str
    kind: str
    started_at: str | None
    finished_at: str | None
    units_committed: int
    units_skipped: int
    items: int
    items_ok: int
    items_failed: int
    audio_hours: float
    wall_seconds: float
    real_time_factor: float
    errors_by_reason: dict[str, int]
    device: str | None = None
    num_encoders: int | None = None
    status: str | None = None  # completed, failed, interrupted (older records: None)
    summary: str | None = None  # what a maintenance run (kind "compact") did, in one line

    @classmethod
    def from_record(cls, run_id: str, record: Mapping[str, Any]) -> RunStatus:
        wall = float(record.get("wall_seconds") or 0.0)
        audio = float(record.get("audio_seconds") or 0.0)
        started = record.get("started_at") or _time_from_run_id(run_id)
        finished = record.get("finished_at") or _plus_seconds(started, wall)
        resources = record.get("resources") or {}
        return cls(
            run_id=run_id,
            kind=str(record.get("kind") or "tokenize"),
            started_at=started,
            finished_at=finished,
            units_committed=int(record.get("units_committed") or 0),
            units_skipped=int(record.get("units_skipped") or 0),
            items=int(record.get("items") or 0),
            items_ok=int(record.get("items_ok") or 0),
            items_failed=int(record.get("items_failed") or 0),
            audio_hours=audio / 3600,
            wall_seconds=wall,
            real_time_factor=audio / wall if wall > 0 else 0.0,
            errors_by_reason=dict(sorted((record.get("errors_by_reason") or {}).items())),
            device=resources.get("device"),
            num_encoders=resources.get("num_encoders"),
            status=str(record["status"]) if record.get("status") else None,
            summary=str(record["summary"]) if record.get("summary") else None,
        )


def _time_from_run_id(run_id: str) -> str | None:
    """Run ids start with their UTC start time (`20260101T120000Z-…`)."""
    try:
        when = dt.datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    return when.isoformat(timespec="seconds")


def _plus_seconds(iso: str | None, seconds: float) -> str | None:
    if not iso:
        return None
    try:
        start = dt.datetime.fromisoformat(iso)
    except ValueError:
        return None
    return (start + dt.timedelta(seconds=round(seconds))).isoformat(timespec="seconds")


@dataclass
class VersionStatus:
    """One dataset version: manifest totals, then its runs oldest first."""

    version: str
    url: str
    units_committed: int = 0
    items: int = 0
    items_ok: int = 0
    items_failed: int = 0
    audio_hours: float = 0.0
    token_frames: int = 0
    last_committed_at: str | None = None
    runs: list[RunStatus] = field(default_factory=list)
    damaged_entries: dict[str, str] = field(default_factory=dict)  # _manifest/<unit>.json → why
    damaged_runs: dict[str, str] = field(default_factory=dict)  # runs/<run>.json → why
    damaged_index: dict[str, str] = field(default_factory=dict)  # _manifest/_index/<seq>.parquet → why
    manifest_index: str | None = None  # the consolidated manifest read (None: entry files only)
    loose_entries: int = 0  # entry files present besides the index
    writer: str | None = None  # the run holding a live lease, described


@dataclass
class OutputStatus:
    root: str
    versions: list[VersionStatus] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """Totals per version, then one line per run and its errors by reason."""
        lines = [f"status {self.root}: {len(self.versions)} dataset version(s)"]
        for v in self.versions:
            lines.append(
                f"  {v.version}: {v.units_committed} units committed, {v.items} items "
                f"({v.items_ok} tokenized, {v.items_failed} failed), {v.audio_hours:.3f} "
                f"audio-h, last commit {v.last_committed_at or '-'}"
            )
            if v.writer:
                lines.append(f"    being written now by {v.writer}")
            where = f"index {v.manifest_index} + " if v.manifest_index else ""
            lines.append(f"    manifest: {where}{v.loose_entries} entry file(s)")
            if v.damaged_index:
                lines.append(
                    f"    damaged manifest index files (read {v.manifest_index or 'no index'} and the "
                    f"entry files instead; `semtok compact` replaces them): {len(v.damaged_index)}"
                )
                lines += [f"      {path}: {why}" for path, why in v.damaged_index.items()]
            if v.damaged_entries:
                lines.append(
                    f"    damaged manifest entries (units not committed; a rerun redoes "
                    f"them): {len(v.damaged_entries)}"
                )
                lines += [f"      {path}: {why}" for path, why in v.damaged_entries.items()]
            if v.damaged_runs:
                lines.append(f"    damaged run records (skipped): {len(v.damaged_runs)}")
                lines += [f"      {path}: {why}" for path, why in v.damaged_runs.items()]
            for r in v.runs:
                if r.summary is not None:  # a compaction: what it folded, not items
                    ended = "" if r.status in (None, "completed") else f" ({r.status})"
                    lines.append(
                        f"    {r.run_id} [{r.kind}] {r.started_at or '?'} -> {r.finished_at or '?'}"
                        f"{ended}: {r.summary}, wall {r.wall_seconds:.1f} s"
                    )
                    continue
                where = f" on {r.num_encoders} {r.device} encoder(s)" if r.device else ""
                lines.append(
                    f"    {r.run_id} [{r.kind}] {r.started_at or '?'} -> {r.finished_at or '?'}: "
                    f"{r.items} items ({r.items_ok} ok, {r.items_failed} failed), "
                    f"{r.audio_hours:.3f} audio-h, {r.units_committed} units "
                    f"({r.units_skipped} already done), wall {r.wall_seconds:.1f} s, "
                    f"{r.real_time_factor:.1f}x real time{where}"
                )
                if r.errors_by_reason:
                    lines.append(
                        "      errors: " + ", ".join(f"{k}: {n}" for k, n in r.errors_by_reason.items())
                    )
        return "\n".join(lines)


def output_status(
    output: str, *, version: str | None = None, storage_options: Mapping[str, Any] | None = None
) -> OutputStatus:
    """Status of every dataset version under `output` (or only `version`)."""
    fs, root_path = open_filesystem(output, storage_options)
    root = output.rstrip("/")
    versions = dataset_versions(fs, root_path, version)
    status = OutputStatus(root=redact_uri(root))
    for name in versions:
        layout = OutputLayout(root, name)
        found = with_retries(functools.partial(read_manifest_report, fs, layout))
        runs_found = with_retries(functools.partial(read_run_records_report, fs, layout))
        manifest, records = found.entries, runs_found.records
        entry = VersionStatus(
            version=name,
            url=redact_uri(layout.version_url),
            units_committed=len(manifest),
            damaged_entries=found.damaged,
            damaged_runs=runs_found.damaged,
            damaged_index=found.damaged_index,
            manifest_index=found.index,
            loose_entries=len(found.loose),
        )
        holder = with_retries(functools.partial(read_lease, fs, layout))
        if holder is not None and holder.live:
            entry.writer = holder.describe()
        for unit_id, unit in manifest.items():
            try:
                counts = (
                    int(unit.get("n_items") or 0),
                    int(unit.get("n_tokens_rows") or 0),
                    int(unit.get("n_error_rows") or 0),
                    float(unit.get("audio_seconds") or 0.0),
                    int(unit.get("n_frames") or 0),
                )
            except (TypeError, ValueError) as error:
                entry.damaged_entries[layout.manifest_rel(unit_id)] = f"unusable counts: {error}"
                continue
            entry.items += counts[0]
            entry.items_ok += counts[1]
            entry.items_failed += counts[2]
            entry.audio_hours += counts[3] / 3600
            entry.token_frames += counts[4]
        stamps = [str(u["committed_at"]) for u in manifest.values() if u.get("committed_at")]
        entry.last_committed_at = max(stamps) if stamps else None
        runs = []
        for run_id, record in records.items():
            try:
                runs.append(RunStatus.from_record(run_id, record))
            except (TypeError, ValueError, AttributeError) as error:  # well-formed JSON, odd values
                entry.damaged_runs[f"runs/{run_id}.json"] = f"unusable record: {error}"
        entry.runs = sorted(runs, key=lambda r: (r.started_at or "", r.run_id))
        status.versions.append(entry)
    return status
