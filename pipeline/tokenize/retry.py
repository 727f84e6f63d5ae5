"""`semtok retry-failed`: reprocess only the items in the errors table (e.g. after a fix).

Why not just rerun tokenize: committed units are skipped, by design. Here each unit with error
rows is read again, but only its failed items are decoded and encoded, through the same Ray Data
stages as tokenize (a `PrepareUnit` that keeps only the named items, then the encode actor pool).
Each finished unit is merged with what is committed — old token rows + new successes; old error
rows of retried items replaced by their new outcome — and committed with `commit_unit`: same final
names, data first, manifest entry last, so a crash at any point leaves the old or the new unit,
never both, and every item stays exactly once (in tokens, or in errors with its latest reason).
Each recommit leaves a new manifest entry file, so the run ends like tokenize: it compacts the
manifest under its lease once `COMPACT_MIN_LOOSE` entry files exist (`compact_when_due`).
"""

from __future__ import annotations

import io
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import pyarrow.parquet as pq

from codec import build_segmenter
from pipeline.config import ConfigError, TokenizeConfig
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.manifest import read_manifest
from pipeline.dataset.run_records import latest_tokenize_record
from pipeline.dataset.versions import dataset_versions
from pipeline.io.storage import open_filesystem, with_retries
from pipeline.records import InputUnit
from pipeline.runtime.ray_setup import worker_storage_options
from pipeline.tokenize.assemble import FinishedUnit
from pipeline.tokenize.fingerprint import job_fingerprint
from pipeline.tokenize.job import RunSummary, compact_when_due, execute_units, recorded_run, writer_lease
from pipeline.tokenize.prepare_stage import UNIT, PrepareUnit, empty_row

__all__ = ["OnlyItemsPrepare", "retry_failed"]


class OnlyItemsPrepare(PrepareUnit):
    """`PrepareUnit` that decodes only the items named in the row's "only" list.

    Item indexes stay those of the full unit (the assembler keys by them); the closing row counts
    only the kept items, so the unit finishes when those are accounted for.
    """

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if self._segmenter is None:
            self._segmenter = build_segmenter(self.spec)
        unit = InputUnit.from_json(row["unit"])
        wanted = {str(i) for i in row.get("only") or ()}
        count = 0
        for index, item in enumerate(self.read_items(unit)):
            if item.item_id not in wanted:
                continue
            count += 1
            yield from self._item_rows(unit.unit_id, index, item)
        closing = empty_row()
        closing.update(row_kind=UNIT, unit_id=unit.unit_id, n_items=count, unit=row["unit"])
        yield closing


@dataclass
class _Target:
    """One unit to retry: its committed entry and the error rows being retried."""

    unit: InputUnit  # as committed (full)
    read_unit: InputUnit  # what the prepare stage reads (files units: only the failed files)
    errors: list[dict[str, Any]]  # all committed error rows of the unit
    retried: set[str]  # ids being retried


def _read_rows(fs, layout: OutputLayout, rel: str) -> list[dict[str, Any]]:
    data = with_retries(lambda: fs.cat_file(layout.path(rel)))
    return pq.read_table(io.BytesIO(data)).to_pylist()


def _targets(
    fs, layout: OutputLayout, manifest: Mapping[str, dict[str, Any]], reasons: Sequence[str] | None
) -> list[_Target]:
    targets = []
    for unit_id, entry in manifest.items():
        errors_file = next((f for f in entry.get("files", []) if f["kind"] == "errors"), None)
        if errors_file is None or not entry.get("n_error_rows", errors_file.get("rows")):
            continue
        errors = _read_rows(fs, layout, errors_file["path"])
        retried = {row["id"] for row in errors if not reasons or row["reason"] in reasons}
        if not retried:
            continue
        unit = InputUnit.from_dict({**entry["unit_info"], "unit_id": unit_id})
        readable = unit
        if unit.kind == "files":  # one file per item: read only the failed files
            failed_uris = {row["source_uri"] for row in errors if row["id"] in retried}
            readable = InputUnit(
                unit_id=unit.unit_id,
                kind="files",
                root=unit.root,
                uris=tuple(u for u in unit.uris if u in failed_uris),
            )
        targets.append(_Target(unit, readable, errors, retried))
    return targets


def _token_row(row: dict[str, Any]) -> dict[str, Any]:
    """A committed token row back into the form `commit_unit` takes."""
    return {
        **row,
        "semantic_tokens": np.asarray(row["semantic_tokens"], dtype=np.uint16),
        "acoustic_tokens": np.asarray(row["acoustic_tokens"], dtype=np.uint16),
        "metadata": json.loads(row.get("metadata") or "{}"),
    }


@dataclass
class _Merger:
    """Committed rows + the retry's outcome (items the read did not produce keep their row).

    Runs in the committer actors, so it carries only the retried units' entries and opens the
    output itself from its URL and storage options (credentials resolved on the driver)."""

    layout: OutputLayout
    storage_options: dict[str, Any]
    entries: dict[str, dict[str, Any]]  # unit id → its committed manifest entry
    targets: dict[str, _Target]

    def __call__(self, finished: FinishedUnit) -> FinishedUnit:
        fs, _ = open_filesystem(self.layout.root_url, self.storage_options)
        target = self.targets[finished.unit.unit_id]
        entry = self.entries[target.unit.unit_id]
        tokens_file = next(f for f in entry["files"] if f["kind"] == "tokens")
        old_tokens = [_token_row(r) for r in _read_rows(fs, self.layout, tokens_file["path"])]
        redone = {r["id"] for r in finished.token_rows} | {r["id"] for r in finished.error_rows}
        redone &= target.retried
        # The tokens file may already hold this merge (a committer lost after the commit landed,
        # the unit encoded again): retried items' old rows give way to their new outcome.
        tokens = [r for r in old_tokens if r["id"] not in redone]
        tokens += [r for r in finished.token_rows if r["id"] in redone]
        in_tokens = {r["id"] for r in tokens}
        errors = [r for r in target.errors if r["id"] not in redone and r["id"] not in in_tokens]
        errors += [r for r in finished.error_rows if r["id"] in redone]
        counts = Counter([r["id"] for r in tokens] + [r["id"] for r in errors])
        if len(counts) != len(tokens) + len(errors):  # an item twice: refuse to commit it
            twice = sorted(i for i, n in counts.items() if n > 1)
            raise RuntimeError(f"unit {target.unit.unit_id}: items would appear twice: {twice[:3]}")
        return FinishedUnit(target.unit, tokens, errors)


def retry_failed(
    output: str,
    *,
    version: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    input_storage_options: Mapping[str, Any] | None = None,
    reasons: Sequence[str] | None = None,
    ray_address: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    stream: TextIO = sys.stderr,
) -> list[RunSummary]:
    """Retry the failed items of every (or one) dataset version under `output`; one summary each.

    The job's config comes from the version's latest tokenize run record (storage options are
    redacted there: pass them, or use the AWS env vars); `overrides` adjust execution fields
    (num_encoders, ...). Refuses when the current codec would write another version.
    """
    fs, root_path = open_filesystem(output, storage_options)
    versions = dataset_versions(fs, root_path, version)
    summaries = []
    for name in versions:
        layout = OutputLayout(output.rstrip("/"), name)
        summaries.append(
            _retry_version(
                fs,
                layout,
                storage_options=storage_options,
                input_storage_options=input_storage_options,
                reasons=reasons,
                ray_address=ray_address,
                overrides=overrides or {},
                stream=stream,
            )
        )
    return summaries


def _retry_version(
    fs,
    layout: OutputLayout,
    *,
    storage_options,
    input_storage_options,
    reasons,
    ray_address,
    overrides,
    stream: TextIO,
) -> RunSummary:
    started = time.monotonic()
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-retry-" + uuid.uuid4().hex[:8]
    summary = RunSummary(run_id=run_id, output=layout.version_url)
    try:
        record = with_retries(lambda: latest_tokenize_record(fs, layout))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    # Outputs written before `resampler` was a config field were resampled with soxr.
    recorded = {
        "resampler": (record.get("fingerprint") or {}).get("resampler", "soxr-hq"),
        **record["config"],
    }
    config_data = {
        **recorded,
        **dict(overrides),
        "ray_address": ray_address,
        "storage_options": dict(input_storage_options or storage_options or {}),
    }
    config = TokenizeConfig.from_dict(config_data)
    fingerprint = job_fingerprint(config)
    if OutputLayout.for_fingerprint(layout.root_url, fingerprint).version != layout.version:
        raise ConfigError(
            f"the recorded codec config now makes another dataset version than "
            f"{layout.version}: retrying would mix tokens of different codecs"
        )
    manifest = with_retries(lambda: read_manifest(fs, layout))
    targets = {t.unit.unit_id: t for t in _targets(fs, layout, manifest, reasons)}
    summary.units_planned = len(targets)
    n_items = sum(len(t.retried) for t in targets.values())
    print(
        f"[semtok] retry-failed {layout.version_url}: {n_items} failed item(s) in {len(targets)} unit(s)",
        file=stream,
        flush=True,
    )
    record = {
        "kind": "retry-failed",
        "config": config.to_dict(),
        "fingerprint": fingerprint,
        "reasons": list(reasons or []),
    }
    with (
        writer_lease(fs, layout, run_id, "semtok retry-failed", stream) as lease,
        recorded_run(fs, layout, summary, started, stream, record, lease=lease),
    ):
        if targets:
            execute_units(
                config,
                [t.read_unit for t in targets.values()],
                fs,
                layout,
                fingerprint,
                summary,
                stream,
                prepare_cls=OnlyItemsPrepare,
                only_items={u: sorted(t.retried) for u, t in targets.items()},
                transform=_Merger(
                    layout,
                    worker_storage_options(layout.root_url, dict(storage_options or {})),
                    {unit_id: manifest[t.unit.unit_id] for unit_id, t in targets.items()},
                    targets,
                ),
                lease=lease,
                output_options=storage_options or {},
            )
        # Each retried unit was recommitted (a new entry file): fold them like tokenize does.
        compact_when_due(fs, layout, lease, run_id, stream)
    print(
        f"[semtok] retry-failed done: {summary.items_ok} of {summary.items} retried item(s) now "
        f"tokenized, {summary.items_failed} still failing",
        file=stream,
        flush=True,
    )
    return summary
