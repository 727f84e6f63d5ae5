"""`semtok verify`: prove that a committed output holds every input item exactly once.

Why a tool of its own: exactly once is a property of naming + commit order, and faults (killed
drivers, lost nodes, storage outages) are survived by rerunning. Verify is the cheap check that a
rerun left nothing behind: it reads the manifest (the consolidated index plus any entry files) and
makes one listing per output folder, and compares the two (names, sizes). The item ids of a `files`
unit come from its entry (one per input file) when its files' row counts add up; only the other
units' Parquet files are opened (footer and `id` column). `deep=True` reads every byte of every
file (sha256, ids). So a compacted output of 10^5 one-file units verifies in seconds. It reports

- missing units / items: planned from the input (with the config of the latest run record, or
  flags) but not committed, and items of committed `files` units absent from their unit's files;
- duplicate item ids across the tokens and errors tables of a version;
- orphaned files: data files under tokens/ errors/ wds/ (and `_tmp/`, hidden temporaries) that no
  manifest entry lists — leftovers of crashed attempts, never read by readers;
- bad files: listed but missing, unreadable, size / row-count mismatches vs the manifest, and with
  `deep=True` sha256 mismatches (that reads every byte);
- damaged manifest entries (corrupt, truncated, wrong shape): their units are not committed;
- damaged manifest index files (`_manifest/_index/<seq>.parquet`, the consolidated manifest):
  readers fell back to an older index plus the entry files; `semtok compact` supersedes them;
- with an input: changed and deleted input items — committed units whose manifest entry carries
  source stamps (`unit_info["stamps"]`, parallel to `uris`, see `storage.source_stamp`) are
  compared with the objects now; new input items show up as missing units / items (entries
  written before stamps existed are not checked for changes);
- nothing to verify: an output path that does not exist, or no committed unit at all (a mistyped
  path must not pass as "0 problems").

Every dataset version under the root is checked, or one with `version=`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import posixpath
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import pyarrow.parquet as pq

from pipeline.dataset.layout import (
    ERRORS_DIR,
    MANIFEST_DIR,
    TMP_DIR,
    TOKENS_DIR,
    WDS_DIR,
    OutputLayout,
)
from pipeline.dataset.lease import read_lease
from pipeline.dataset.manifest import READ_CHUNK, READ_THREADS, read_manifest_report
from pipeline.dataset.manifest_index import INDEX_DIR, index_seq
from pipeline.dataset.run_records import read_run_records
from pipeline.dataset.versions import dataset_versions
from pipeline.io.sources import file_item_id
from pipeline.io.storage import (
    open_filesystem,
    redact_text,
    redact_uri,
    with_retries,
)
from pipeline.records import InputUnit
from pipeline.tokenize.work_plan import plan_against_output

__all__ = ["VerifyReport", "VersionReport", "verify"]

# Show at most this many examples per problem kind in the text report (JSON has them all).
EXAMPLES = 5


@dataclass
class VersionReport:
    """Findings for one dataset version; `problems` counts everything that is wrong."""

    version: str
    url: str
    units_committed: int = 0
    items_tokens: int = 0
    items_errors: int = 0
    units_planned: int | None = None  # only with an input to plan against
    missing_units: list[str] = field(default_factory=list)
    missing_items: list[str] = field(default_factory=list)
    duplicate_items: list[str] = field(default_factory=list)
    orphaned_files: list[str] = field(default_factory=list)
    bad_files: list[dict[str, str]] = field(default_factory=list)
    damaged_entries: list[dict[str, str]] = field(default_factory=list)
    damaged_index: list[dict[str, str]] = field(default_factory=list)  # index files not trusted
    manifest_index: str | None = None  # the index file read (None: entry files only)
    loose_entries: int = 0  # entry files present (not yet folded into an index, or folded last)
    files_read: int = 0  # data files opened (the rest were checked against the listing only)
    changed_items: list[str] = field(default_factory=list)  # input URIs whose stamp changed
    deleted_items: list[str] = field(default_factory=list)  # input URIs that are gone
    issues: list[str] = field(default_factory=list)  # one-line problems (e.g. nothing committed)
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return (
            len(self.missing_units)
            + len(self.missing_items)
            + len(self.duplicate_items)
            + len(self.orphaned_files)
            + len(self.bad_files)
            + len(self.damaged_entries)
            + len(self.damaged_index)
            + len(self.changed_items)
            + len(self.deleted_items)
            + len(self.issues)
        )


@dataclass
class VerifyReport:
    """All versions checked under one output root."""

    root: str
    versions: list[VersionReport] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)  # about the root itself (missing, empty)

    @property
    def problems(self) -> int:
        return len(self.issues) + sum(v.problems for v in self.versions)

    @property
    def ok(self) -> bool:
        return self.problems == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "ok": self.ok,
            "problems": self.problems,
            "issues": self.issues,
            "versions": [{**asdict(v), "problems": v.problems} for v in self.versions],
        }

    def text(self) -> str:
        """A short human report: counts, then a few examples of each problem."""
        lines = [
            f"verify {self.root}: {len(self.versions)} version(s), "
            f"{'OK' if self.ok else f'{self.problems} problem(s)'}"
        ]
        lines += [f"  problem: {issue}" for issue in self.issues]
        for v in self.versions:
            planned = f", {v.units_planned} planned" if v.units_planned is not None else ""
            lines.append(
                f"  {v.version}: {v.units_committed} units committed{planned}, "
                f"{v.items_tokens} token rows, {v.items_errors} error rows, "
                f"{v.files_read} data file(s) read"
            )
            lines += [f"    problem: {issue}" for issue in v.issues]
            for name in (
                "missing_units",
                "missing_items",
                "duplicate_items",
                "orphaned_files",
                "changed_items",
                "deleted_items",
            ):
                values = getattr(v, name)
                if values:
                    shown = ", ".join(values[:EXAMPLES]) + (" ..." if len(values) > EXAMPLES else "")
                    lines.append(f"    {name.replace('_', ' ')}: {len(values)} ({shown})")
            if v.bad_files:
                lines.append(f"    bad files: {len(v.bad_files)}")
                lines += [f"      {b['path']}: {b['problem']}" for b in v.bad_files[:EXAMPLES]]
            if v.damaged_entries:
                lines.append(
                    f"    damaged manifest entries (units not committed; a rerun redoes "
                    f"them): {len(v.damaged_entries)}"
                )
                lines += [f"      {d['path']}: {d['problem']}" for d in v.damaged_entries[:EXAMPLES]]
            if v.damaged_index:
                lines.append(
                    f"    damaged manifest index files (readers used {v.manifest_index or 'no index'} "
                    f"and the entry files; `semtok compact` replaces them): {len(v.damaged_index)}"
                )
                lines += [f"      {d['path']}: {d['problem']}" for d in v.damaged_index[:EXAMPLES]]
            lines += [f"    note: {note}" for note in v.notes]
        return "\n".join(lines)


def verify(
    output: str,
    *,
    input: str | None = None,  # noqa: A002 - mirrors the CLI argument
    version: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    input_storage_options: Mapping[str, Any] | None = None,
    input_kind: str | None = None,
    files_per_unit: int | None = None,
    glob: str | None = None,
    deep: bool = False,
) -> VerifyReport:
    """Check every (or one) dataset version under `output`; see the module doc for what."""
    fs, root_path = open_filesystem(output, storage_options)
    root = output.rstrip("/")
    report = VerifyReport(root=redact_uri(root))
    if not with_retries(lambda: fs.exists(root_path)):
        report.issues.append(f"output path does not exist: {redact_uri(root)}")
        return report
    versions = dataset_versions(fs, root_path, version)
    if not versions:
        hint = ""
        if with_retries(lambda: fs.exists(f"{root_path.rstrip('/')}/{MANIFEST_DIR}")):
            parent, _, name = root.rstrip("/").rpartition("/")
            hint = (
                f" ({redact_uri(root)} looks like a dataset version folder itself: pass its parent "
                f"{redact_uri(parent)} with --version {name})"
            )
        report.issues.append(f"no committed units under {redact_uri(root)}{hint}")
        return report
    input_options = input_storage_options or storage_options or {}
    for name in versions:
        layout = OutputLayout(root, name)
        result, manifest = _verify_version(fs, layout, deep=deep)
        if input is not None:
            _check_plan(
                fs,
                layout,
                result,
                input,
                input_options,
                input_kind=input_kind,
                files_per_unit=files_per_unit,
                glob=glob,
            )
            _note_unstamped(result, manifest)
        report.versions.append(result)
    return report


def _verify_version(
    fs: fsspec.AbstractFileSystem, layout: OutputLayout, *, deep: bool
) -> tuple[VersionReport, dict[str, dict[str, Any]]]:
    """The checks of one version that need no input; returns the report and the manifest read."""
    result = VersionReport(version=layout.version, url=redact_uri(layout.version_url))
    found = with_retries(lambda: read_manifest_report(fs, layout))
    manifest = found.entries
    result.units_committed = len(manifest)
    result.damaged_entries = [{"path": path, "problem": why} for path, why in found.damaged.items()]
    result.damaged_index = [{"path": path, "problem": why} for path, why in found.damaged_index.items()]
    result.manifest_index, result.loose_entries = found.index, len(found.loose)
    if not manifest:
        result.issues.append(f"no committed units under {redact_uri(layout.version_url)}")
    holder = with_retries(lambda: read_lease(fs, layout))
    if holder is not None and holder.live:
        result.notes.append(
            f"{holder.describe()} is writing this version now: what is reported "
            "may change when it commits more"
        )
    listed: dict[str, tuple[str, dict[str, Any]]] = {}  # rel path → (unit id, file record)
    for unit_id, entry in manifest.items():
        for record in entry.get("files", []):
            listed[record["path"]] = (unit_id, record)
    present = _list_outputs(fs, layout)
    result.orphaned_files = sorted(rel for rel in present if rel not in listed)
    for rel in sorted(set(listed) - set(present)):
        result.bad_files.append({"path": rel, "problem": "listed in the manifest but missing"})

    # Which item ids each unit holds. A `files` unit names its items (one per input file): when its
    # Parquet files are all listed with the manifest's sizes and their row counts add up to its
    # files, the ids come from the manifest (the index), no file is opened. Other units, units whose
    # counts disagree, and every file with deep=True are read: footer + id column (deep: all bytes).
    ids_by_unit: dict[str, list[str]] = {}
    all_ids: list[str] = []
    jobs: list[tuple[str, str, dict[str, Any]]] = []
    from_manifest: set[str] = set()  # units whose ids came from their entry
    for unit_id, entry in manifest.items():
        records = [r for r in entry.get("files", []) if r["path"] in present]
        intact = []  # listed at the manifest's size: worth reading
        for rec in records:
            problem = _size_problem(rec, present[rec["path"]])
            if problem:
                result.bad_files.append({"path": rec["path"], "problem": problem})
            else:
                intact.append(rec)
        derived = None if deep else _ids_from_manifest(entry, present)
        if derived is not None:
            from_manifest.add(unit_id)
            ids_by_unit[unit_id] = derived
            all_ids.extend(derived)
            for rec in records:
                if rec["kind"] == "tokens":
                    result.items_tokens += int(rec["rows"])
                elif rec["kind"] == "errors":
                    result.items_errors += int(rec["rows"])
            continue
        jobs += [(rec["path"], unit_id, rec) for rec in intact if deep or rec["kind"] in ("tokens", "errors")]

    def check(job: tuple[str, str, dict[str, Any]]) -> tuple[list[str], str]:
        rel, _, rec = job
        try:
            return _check_file(fs, layout, rec, deep=deep)
        except Exception as error:  # noqa: BLE001 - an unreadable file is a finding, not a crash
            return [], f"unreadable: {type(error).__name__}: {redact_text(str(error))}"[:300]

    result.files_read = len(jobs)
    if jobs:
        # Chunks, not one task per file: 10^5 tiny tasks cost more in the pool than the reads.
        size = max(1, min(READ_CHUNK, -(-len(jobs) // READ_THREADS)))
        chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(chunks))) as pool:
            parts = pool.map(lambda chunk: [check(job) for job in chunk], chunks)
            checked = [one for part in parts for one in part]
        for (rel, unit, rec), (ids, problem) in zip(jobs, checked, strict=True):
            if problem:
                result.bad_files.append({"path": rel, "problem": problem})
            if rec["kind"] == "tokens":
                result.items_tokens += len(ids)
            elif rec["kind"] == "errors":
                result.items_errors += len(ids)
            else:
                continue
            ids_by_unit.setdefault(unit, []).extend(ids)
            all_ids.extend(ids)
    counts = Counter(all_ids)
    result.duplicate_items = sorted(i for i, n in counts.items() if n > 1)

    for unit_id, entry in sorted(manifest.items()):
        if unit_id in from_manifest:
            continue  # its ids are its files' ids and its rows add up: nothing can be missing
        ids = ids_by_unit.get(unit_id, [])
        if entry.get("n_items") is not None and int(entry["n_items"]) != len(ids):
            result.bad_files.append(
                {
                    "path": layout.manifest_rel(unit_id),
                    "problem": f"n_items {entry['n_items']} but the unit's files hold {len(ids)} rows",
                }
            )
        try:
            expected = _expected_file_ids(entry.get("unit_info") or {})
        except Exception as error:  # noqa: BLE001 - a malformed unit_info is a finding
            result.bad_files.append(
                {
                    "path": layout.manifest_rel(unit_id),
                    "problem": f"unit_info unusable: {type(error).__name__}: {error}"[:300],
                }
            )
            expected = None
        if expected is not None:
            result.missing_items += sorted(expected - set(ids))
    return result, manifest


def _note_unstamped(result: VersionReport, manifest: Mapping[str, dict[str, Any]]) -> None:
    """Units committed before source stamps were recorded cannot be checked for changed inputs."""
    unstamped = sum(1 for e in manifest.values() if not (e.get("unit_info") or {}).get("stamps"))
    if unstamped:
        result.notes.append(
            f"{unstamped} committed unit(s) have no source stamps (written before "
            "stamps were recorded): not checked for changed inputs"
        )


def _list_outputs(fs: fsspec.AbstractFileSystem, layout: OutputLayout) -> dict[str, int | None]:
    """Relative path → size of every data file under tokens/ errors/ wds/, `_tmp/` leftovers and
    hidden temporaries in `_manifest/` (those are orphans by definition)."""
    found: dict[str, int | None] = {}
    for folder in (TOKENS_DIR, ERRORS_DIR, WDS_DIR, TMP_DIR, MANIFEST_DIR):
        base = layout.path(folder)
        with_retries(functools.partial(fs.invalidate_cache, base))
        try:
            entries = with_retries(functools.partial(fs.find, base, detail=True))
        except FileNotFoundError:
            continue
        prefix = fs._strip_protocol(layout.version_url).rstrip("/") + "/"
        for name, info in entries.items():
            if info.get("type") == "directory" or name.endswith("/"):
                continue
            rel = name[len(prefix) :] if name.startswith(prefix) else name
            if folder == MANIFEST_DIR and _is_manifest_file(rel):
                continue  # manifest entries and index files are not data files
            found[rel] = info.get("size")
    return found


def _is_manifest_file(rel: str) -> bool:
    """An entry file (`_manifest/<unit>.json`) or an index file (`_manifest/_index/<seq>.parquet`);
    anything else under `_manifest/` (hidden temporaries, stray names) is an orphan."""
    base = posixpath.basename(rel)
    if base.startswith("."):
        return False
    if posixpath.dirname(rel) == INDEX_DIR:
        return index_seq(base) is not None
    return posixpath.dirname(rel) == MANIFEST_DIR and base.endswith(".json")


def _size_problem(rec: Mapping[str, Any], size: int | None) -> str:
    """The listed size vs the manifest's `bytes` ('' when they agree or one is unknown)."""
    if size is not None and rec.get("bytes") is not None and int(size) != int(rec["bytes"]):
        return f"size {size} != manifest bytes {rec['bytes']}"
    return ""


def _ids_from_manifest(entry: Mapping[str, Any], present: Mapping[str, int | None]) -> list[str] | None:
    """The item ids of a committed `files` unit without opening its files, or None (read them).

    Trusted when every tokens / errors file of the entry is listed with the manifest's size and
    their rows add up to one row per input file (= `n_items`): the commit wrote exactly those files
    with those counts, and a file changed since then shows a different size (`--deep` compares
    sha256 for same-size damage)."""
    try:
        expected = _expected_file_ids(entry.get("unit_info") or {})
    except Exception:  # noqa: BLE001 - malformed unit_info: read the files, reported later
        return None
    if expected is None:
        return None
    rows = 0
    for rec in entry.get("files", []):
        if rec["kind"] not in ("tokens", "errors"):
            continue
        if rec["path"] not in present or _size_problem(rec, present[rec["path"]]):
            return None
        if not isinstance(rec.get("rows"), int):
            return None
        rows += rec["rows"]
    n_items = entry.get("n_items")
    if rows != len(expected) or (n_items is not None and int(n_items) != rows):
        return None
    return sorted(expected)


def _check_file(
    fs: fsspec.AbstractFileSystem,
    layout: OutputLayout,
    rec: Mapping[str, Any],
    *,
    deep: bool,
) -> tuple[list[str], str]:
    """(ids in the file, problem or ''): footer rows / id column (deep: sha256 of all bytes too)."""
    path = layout.path(rec["path"])
    if deep:
        data = with_retries(lambda: fs.cat_file(path))
        if hashlib.sha256(data).hexdigest() != rec.get("sha256"):
            return [], "sha256 does not match the manifest"
        if rec["kind"] not in ("tokens", "errors"):
            return [], ""
        table = pq.read_table(io.BytesIO(data), columns=["id"])
    elif rec["kind"] not in ("tokens", "errors"):
        return [], ""
    else:

        def read_ids() -> Any:
            with fs.open(path, "rb") as handle:
                return pq.ParquetFile(handle).read(columns=["id"])

        table = with_retries(read_ids)
    ids = [str(i) for i in table.column("id").to_pylist()]
    if rec.get("rows") is not None and int(rec["rows"]) != len(ids):
        return ids, f"{len(ids)} rows != manifest rows {rec['rows']}"
    return ids, ""


def _expected_file_ids(info: Mapping[str, Any]) -> set[str] | None:
    """Item ids a committed `files` unit must hold (one per file); None for other kinds."""
    if info.get("kind") != "files":
        return None
    unit = InputUnit.from_dict({**info, "uris": info.get("uris") or []})
    return _file_item_ids(unit)


def _file_item_ids(unit: InputUnit) -> set[str]:
    return {unit.id_prefix + file_item_id(unit, uri) for uri in unit.uris}


def latest_run_config(fs: fsspec.AbstractFileSystem, layout: OutputLayout) -> dict[str, Any]:
    """Config of the newest tokenize run record of a version ({} when there is none)."""
    records = with_retries(lambda: read_run_records(fs, layout))
    for _, record in sorted(records.items(), reverse=True):
        if record.get("kind", "tokenize") == "tokenize" and record.get("config"):
            return dict(record["config"])
    return {}


def _check_plan(
    fs: fsspec.AbstractFileSystem,
    layout: OutputLayout,
    result: VersionReport,
    input_url: str,
    storage_options: Mapping[str, Any],
    *,
    input_kind: str | None,
    files_per_unit: int | None,
    glob: str | None,
) -> None:
    """Plan the input as `run_tokenize` would (same exclusions) and report what is not committed."""

    config = latest_run_config(fs, layout)
    if not config:
        result.notes.append("no run record: planned with default/flag settings")
    plan = plan_against_output(
        input_url,
        fs,
        layout,
        storage_options=storage_options,
        kind=input_kind or config.get("input_kind") or "auto",
        files_per_unit=files_per_unit or int(config.get("files_per_unit") or 256),
        glob=glob if glob is not None else config.get("glob"),
        output=layout.root_url,
        id_prefix=str(config.get("id_prefix") or ""),
    )
    # Changed and deleted inputs as the rerun sees them (the same listing and stamps).
    result.changed_items = sorted(redact_uri(u) for u in plan.changed_uris)
    result.deleted_items = sorted(redact_uri(u) for u in plan.deleted_uris)
    # Committed units the plan redoes because their inputs changed are reported as changed /
    # deleted items (from their stamps), not as missing.
    missing = [unit for unit in plan.units if unit.unit_id not in plan.manifest]
    result.units_planned = plan.planned
    result.missing_units = sorted(unit.unit_id for unit in missing)
    for unit in missing:
        if unit.kind == "files":  # other kinds name their items only when read
            result.missing_items += _file_item_ids(unit)
    result.missing_items.sort()


def format_json(report: VerifyReport) -> str:
    return json.dumps(report.to_dict(), indent=1, sort_keys=True)
