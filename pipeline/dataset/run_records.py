"""Run records: one JSON per run under `runs/`, written however the run ended (completed, failed,
interrupted), so `semtok status` can show every run and how far it got."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec

from pipeline.dataset.layout import (
    RUNS_DIR,
    OutputLayout,
    publish,
)
from pipeline.dataset.manifest import json_bytes, list_files
from pipeline.io.storage import redact_uri, redact_value

log = logging.getLogger(__name__)


def write_run_record(
    fs: fsspec.AbstractFileSystem, layout: OutputLayout, run_id: str, record: Mapping[str, Any]
) -> str:
    """Publish `runs/<run_id>.json`; returns its path. Every string is redacted (URIs with
    credentials, credential-named keys: `redact_value`), nested config included."""
    path = layout.run_path(run_id)
    publish(fs, path, json_bytes(redact_value(dict(record))))
    return path


@dataclass
class RunRecordsRead:
    """Run records as read: run id → record, and damaged ones (runs/<id>.json → why)."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    damaged: dict[str, str] = field(default_factory=dict)


def read_run_records_report(fs: fsspec.AbstractFileSystem, layout: OutputLayout) -> RunRecordsRead:
    """Every run record of the version; corrupt ones are listed in `damaged`, never raised."""
    result = RunRecordsRead()
    for name in list_files(fs, layout.runs_dir):
        base = name.rsplit("/", 1)[-1]
        if not base.endswith(".json") or base.startswith("."):
            continue
        try:
            raw = fs.cat_file(name)
        except FileNotFoundError:
            continue
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            result.damaged[f"{RUNS_DIR}/{base}"] = f"not valid JSON (truncated or corrupt): {error}"
            continue
        if not isinstance(record, dict):
            result.damaged[f"{RUNS_DIR}/{base}"] = f"not a JSON object but {type(record).__name__}"
            continue
        result.records[base[: -len(".json")]] = record
    result.records = dict(sorted(result.records.items()))
    return result


def read_run_records(fs: fsspec.AbstractFileSystem, layout: OutputLayout) -> dict[str, Any]:
    """run id → run record, for status and metrics (damaged records skipped with a warning)."""
    found = read_run_records_report(fs, layout)
    if found.damaged:
        log.warning(
            "%d damaged run record(s) under %s skipped: %s",
            len(found.damaged),
            redact_uri(layout.version_url),
            ", ".join(found.damaged),
        )
    return found.records


def latest_tokenize_record(fs: fsspec.AbstractFileSystem, layout: OutputLayout) -> dict[str, Any]:
    """The newest tokenize run record of a version: how its tokens were made (config, fingerprint)."""
    records = read_run_records(fs, layout)
    for _, record in sorted(records.items(), reverse=True):
        if record.get("kind", "tokenize") == "tokenize" and record.get("config"):
            return record
    raise ValueError(f"{layout.version_url} has no tokenize run record: cannot tell how it was made")


def utc_now_iso() -> str:
    """Wall-clock time for run records (ISO 8601, UTC): `semtok status` shows when runs ran."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
