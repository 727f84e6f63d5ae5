"""The export driver: a committed semtok output → one of the formats, atomic and resumable.

    plan       read the source's manifest (`pipeline.dataset.manifest.read_manifest`, through
               `pipeline.training.source`), keep units with token rows, fix their order and each
               tokens file's sha256 in `plan.json` (first run only; reruns check it)
    parts      per unit, in worker threads: read its tokens file (checked against the plan's
               sha256), let the format write its part's files, then publish the part record
    finish     the format's files that need every part (card, concatenated stream)
    index      `export.json`, written last: the export is complete

Exactly once, as in tokenize: names fixed by the plan, data before its record, a rerun trusts
only records and overwrites uncommitted leftovers. Random-weight outputs are refused before
anything is written unless allowed. One writer per export folder at a time (no lease here).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow.parquet as pq

from pipeline.config import PositiveInt, validated_dataclass
from pipeline.dataset.card import is_random_weights
from pipeline.dataset.layout import fingerprint_digest
from pipeline.export.base import ExportFormat, ExportPlan, UnitRows
from pipeline.export.state import (
    DONE,
    DONE_KIND,
    PLAN,
    PLAN_KIND,
    STATE_FORMAT_VERSION,
    ExportError,
    ExportState,
    PlannedUnit,
    now_iso,
)
from pipeline.io.storage import open_filesystem, redact_uri, redact_value, with_retries
from pipeline.training.source import OutputSource, resolve_output
from pipeline.training.token_layout import Order

log = logging.getLogger(__name__)

__all__ = ["ExportConfig", "ExportError", "ExportResult", "build_format", "run_export"]

ExportTarget = Literal["shar", "hf", "bin"]


@validated_dataclass
class ExportConfig:
    """One export: which output (and version), which format, where; validated on creation."""

    output: str  # a semtok output root (with `version` when it holds several) or a version folder
    to: ExportTarget
    dest: str  # the export folder (local path or fsspec URL)
    version: str | None = None
    allow_random_weights: bool = False
    order: Order = "interleaved"  # --to bin: how a frame's two tokens are laid out
    threads: PositiveInt = 4  # units exported at once (I/O bound)
    storage_options: dict[str, Any] = field(default_factory=dict)  # the output's storage
    dest_storage_options: dict[str, Any] | None = None  # the export folder's (default: storage_options)


# the library each format writes with (the `export` extra); checked before anything is written
FORMAT_LIBRARIES = {"shar": "lhotse", "hf": "datasets"}


def build_format(config: ExportConfig, fingerprint: Mapping[str, Any]) -> ExportFormat:
    """The writer of `config.to` for tokens of this fingerprint (lhotse/datasets load lazily).
    ExportError when the format's library is not installed."""
    library = FORMAT_LIBRARIES.get(config.to)
    if library is not None:
        try:
            importlib.import_module(library)
        except ImportError:
            raise ExportError(
                f'--to {config.to} writes with {library}, which is not installed: pip install -e ".[export]"'
            ) from None
    fp = dict(fingerprint)
    if config.to == "shar":
        from pipeline.export.shar import SharFormat

        return SharFormat(fp)
    if config.to == "hf":
        from pipeline.export.hf import HFFormat

        return HFFormat(fp)
    from pipeline.export.token_stream import TokenStreamFormat

    return TokenStreamFormat(fp, order=config.order)


@dataclass
class ExportResult:
    """What a run did: `status` is "exported" (first run finished it), "resumed" (a rerun
    finished it) or "complete" (already complete: nothing written)."""

    status: str
    format: str
    dest: str  # redacted
    version: str
    n_units: int
    n_items: int
    parts_written: int = 0
    parts_skipped: int = 0
    units_not_included: int = 0  # committed after the export's plan was made
    index: dict[str, Any] = field(default_factory=dict, repr=False)

    def text(self) -> str:
        what = f"{self.n_items} items of {self.n_units} units of {self.version}"
        if self.status == "complete":
            line = f"{self.dest} already holds a complete {self.format} export of {what}: nothing to do"
        else:
            resumed = f", {self.parts_skipped} already done" if self.parts_skipped else ""
            line = (
                f"{self.status} {what} to {self.dest} as {self.format} "
                f"({self.parts_written} parts written{resumed})"
            )
        if self.units_not_included:
            line += (
                f"; {self.units_not_included} units committed since the export began are not in it "
                "(export into a new folder to include them)"
            )
        return line


def _open_source(config: ExportConfig) -> OutputSource:
    try:
        return resolve_output(config.output, storage_options=config.storage_options, version=config.version)
    except ValueError as error:
        raise ExportError(str(error)) from None


def _tokens_file(entry: Mapping[str, Any]) -> Mapping[str, Any] | None:
    listed = [f for f in entry.get("files") or () if f.get("kind") == "tokens"]
    return listed[0] if len(listed) == 1 else None


def _plan_units(manifest: Mapping[str, Mapping[str, Any]]) -> list[PlannedUnit]:
    """Committed units with token rows, in unit order (units whose items all failed add nothing)."""
    units: list[PlannedUnit] = []
    for unit_id, entry in sorted(manifest.items()):
        tokens = _tokens_file(entry)
        if tokens is None:
            raise ExportError(f"manifest entry of unit {unit_id!r} lists no single tokens file")
        rows = int(tokens.get("rows", entry.get("n_tokens_rows", 0)) or 0)
        if rows <= 0:
            continue
        units.append(
            PlannedUnit(
                index=len(units),
                unit_id=unit_id,
                tokens_path=tokens["path"],
                sha256=tokens["sha256"],
                rows=rows,
            )
        )
    return units


def _plan_from_dict(data: Mapping[str, Any]) -> ExportPlan:
    return ExportPlan(
        format=str(data["format"]),
        options=dict(data.get("options") or {}),
        source=dict(data.get("source") or {}),
        fingerprint=dict(data.get("fingerprint") or {}),
        units=[PlannedUnit.from_dict(u) for u in data["units"]],
        created_at=str(data.get("created_at", "")),
    )


def _plan_dict(plan: ExportPlan) -> dict[str, Any]:
    return {
        "kind": PLAN_KIND,
        "format_version": STATE_FORMAT_VERSION,
        "format": plan.format,
        "options": plan.options,
        "source": plan.source,
        "fingerprint": plan.fingerprint,
        "units": [u.to_dict() for u in plan.units],
        "created_at": plan.created_at,
    }


def _check_same_export(plan: ExportPlan, fmt: ExportFormat, version: str, dest: str) -> None:
    """A rerun continues the same export or refuses: another format, version or option set into
    the same folder would mix two exports."""
    if plan.format != fmt.name or plan.source.get("version") != version:
        raise ExportError(
            f"{dest} holds a {plan.format} export of {plan.source.get('version')}, not {fmt.name} of "
            f"{version}: export into another folder"
        )
    wanted = fmt.options()
    if plan.options != wanted:
        changed = sorted(k for k in {*plan.options, *wanted} if plan.options.get(k) != wanted.get(k))
        had = ", ".join(f"{k}={plan.options.get(k)!r}" for k in changed)
        asked = ", ".join(f"{k}={wanted.get(k)!r}" for k in changed)
        raise ExportError(
            f"{dest} holds a {plan.format} export made with {had}, not {asked}: "
            "rerun with the same options or export into another folder"
        )


def _part_is_done(record: Mapping[str, Any] | None, unit: PlannedUnit, listing: Mapping[str, int]) -> bool:
    """A part counts once its record names this plan's unit and source file and every file it
    lists is there at its recorded size (deleted or truncated files are redone)."""
    if not record or record.get("index") != unit.index or record.get("source_sha256") != unit.sha256:
        return False
    files = record.get("files")
    if not isinstance(files, list) or not files:
        return False
    return all(isinstance(f, dict) and listing.get(str(f.get("path"))) == f.get("bytes") for f in files)


def _read_unit(source: OutputSource, unit: PlannedUnit, plan: ExportPlan) -> UnitRows:
    data = with_retries(lambda: source.fs.cat_file(source.layout.path(unit.tokens_path)))
    if hashlib.sha256(data).hexdigest() != unit.sha256:
        raise ExportError(
            f"{unit.tokens_path} changed since this export began (recommitted, e.g. by retry-failed): "
            "export into a new folder"
        )
    return UnitRows(unit=unit, table=pq.read_table(io.BytesIO(data)), plan=plan)


def _export_part(
    source: OutputSource, state: ExportState, fmt: ExportFormat, plan: ExportPlan, unit: PlannedUnit
) -> dict[str, Any]:
    """Write one unit's part: its files first, then its record (the commit point)."""
    rows = _read_unit(source, unit, plan)
    part = fmt.write_part(rows)
    files = [state.publish(f.rel, f.data) for f in part.files]
    durations = rows.table.column("duration_s").to_pylist()
    record = {
        "unit_id": unit.unit_id,
        "index": unit.index,
        "source_sha256": unit.sha256,
        "n_items": rows.table.num_rows,
        "audio_seconds": float(sum(durations)),
        "files": files,
        "info": part.info,
        "written_at": now_iso(),
    }
    state.publish_json(state.part_rel(unit.unit_id), record)
    return record


def run_export(config: ExportConfig, *, after_part: Callable[[str], None] | None = None) -> ExportResult:
    """Export `config.output` to `config.dest` as `config.to`, or finish an interrupted export.

    `after_part` is a test hook called with each unit id once its part is committed (raising
    there simulates a kill between parts). ExportError (one line) for user problems.
    """
    source = _open_source(config)
    version = source.layout.version
    fp = source.fingerprint()
    # the flag, or (a fingerprint without it) the weights named `random:SEED`, as the output's card reads it
    if (fp.get("random_weights") or is_random_weights(fp)) and not config.allow_random_weights:
        raise ExportError(
            f"{source.url} was made with random codec weights (tokens carry no meaning): "
            "refusing to export it; pass --allow-random-weights for tests"
        )
    # what the export writes (plan, index, card, file metadata) may be shared: a weights URL in the
    # fingerprint can carry credentials, so it is written redacted, like the output's own card
    public_fp = redact_value(fp)
    fmt = build_format(config, public_fp)
    dest_options = (
        config.storage_options if config.dest_storage_options is None else config.dest_storage_options
    )
    dest_fs, dest_path = open_filesystem(config.dest, dest_options)
    dest = redact_uri(config.dest)
    if with_retries(lambda: dest_fs.isfile(dest_path)):
        raise ExportError(f"{dest} is a file: name a new or empty folder")
    state = ExportState(dest_fs, dest_path, fmt.state_dir)
    manifest = source.manifest()

    stored = state.read_plan()
    if stored is None:
        others = [rel for rel in state.listing() if not rel.startswith(f"{fmt.state_dir}/")]
        if others:
            raise ExportError(
                f"{dest} is not empty and holds no semtok export ({others[0]}, …): use an empty or new folder"
            )
        units = _plan_units(manifest)
        if not units:
            raise ExportError(f"{source.url} has no committed token rows to export")
        plan = ExportPlan(
            format=fmt.name,
            options=fmt.options(),
            source={"url": source.url, "version": version, "fingerprint_digest": fingerprint_digest(fp)},
            fingerprint=public_fp,
            units=units,
            created_at=now_iso(),
        )
        state.publish_json(state.state_rel(PLAN), _plan_dict(plan))
        first_run = True
    else:
        plan = _plan_from_dict(stored)
        _check_same_export(plan, fmt, version, dest)
        first_run = False

    planned = {u.unit_id for u in plan.units}
    not_included = len([u for u in _plan_units(manifest) if u.unit_id not in planned])
    n_items = sum(u.rows for u in plan.units)
    done = state.read_done()
    if done is not None:
        return ExportResult(
            status="complete",
            format=fmt.name,
            dest=dest,
            version=version,
            n_units=plan.n_units,
            n_items=int(done.get("n_items", n_items)),
            parts_skipped=plan.n_units,
            units_not_included=not_included,
            index=done,
        )
    for unit in plan.units:
        tokens = _tokens_file(manifest.get(unit.unit_id) or {})
        if tokens is None or tokens.get("sha256") != unit.sha256:
            raise ExportError(
                f"unit {unit.unit_id!r} of {version} changed since this export began "
                "(recommitted, e.g. by retry-failed): export into a new folder"
            )

    state.clear_tmp()
    listing = state.listing()
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for unit in plan.units:
        record = state.read_part(unit.unit_id)
        if record is not None and _part_is_done(record, unit, listing):
            records[unit.unit_id] = record
        else:
            todo.append(unit)
    skipped = plan.n_units - len(todo)
    if skipped:
        log.info("export to %s: %d of %d parts already committed", dest, skipped, plan.n_units)

    # at most `threads` parts in flight: memory stays bounded, and a stop (or the test hook)
    # leaves no queue of parts that would still commit after it
    queue = iter(todo)
    pending: set[Future[dict[str, Any]]] = set()
    with ThreadPoolExecutor(max_workers=config.threads) as pool:
        while True:
            for unit in queue:
                pending.add(pool.submit(_export_part, source, state, fmt, plan, unit))
                if len(pending) >= config.threads:
                    break
            if not pending:
                break
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                record = future.result()
                records[record["unit_id"]] = record
                log.info("export to %s: part %d/%d committed", dest, len(records), plan.n_units)
                if after_part is not None:
                    after_part(record["unit_id"])

    parts = [records[u.unit_id] for u in plan.units]
    finished_files = fmt.finish(state, plan, parts)
    index = {
        "kind": DONE_KIND,
        "format_version": STATE_FORMAT_VERSION,
        "format": fmt.name,
        "options": plan.options,
        "source": plan.source,
        "fingerprint": plan.fingerprint,
        "n_units": plan.n_units,
        "n_items": sum(int(p["n_items"]) for p in parts),
        "audio_seconds": sum(float(p["audio_seconds"]) for p in parts),
        "n_frames": sum(int(p.get("info", {}).get("n_frames", 0)) for p in parts),
        "files": [f for p in parts for f in p["files"] if not f["path"].startswith(f"{fmt.state_dir}/")]
        + finished_files.files,
        **finished_files.info,
        "completed_at": now_iso(),
    }
    state.publish_json(state.state_rel(DONE), index)
    try:
        fmt.cleanup(state, plan, parts)
        state.clear_tmp()
    except Exception as error:  # noqa: BLE001 - scratch left behind is harmless; say so
        log.warning("export to %s complete, but removing its scratch files failed: %s", dest, error)
    return ExportResult(
        status="exported" if first_run and not skipped else "resumed",
        format=fmt.name,
        dest=dest,
        version=version,
        n_units=plan.n_units,
        n_items=int(index["n_items"]),
        parts_written=len(todo),
        parts_skipped=skipped,
        units_not_included=not_included,
        index=index,
    )
