"""What a job still has to do on its output: the input's units minus what the manifest committed.

One place plans against an output (tokenize, plan, verify), so a rerun, `semtok plan` and
`semtok verify --input` agree on committed, changed, deleted and new inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import ConfigError, TokenizeConfig
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.manifest import ManifestRead, read_manifest_report
from pipeline.io.sources import plan_units
from pipeline.io.storage import open_filesystem, protocol_of, redact_uri, with_retries
from pipeline.records import InputUnit


@dataclass
class WorkPlan:
    """The units a job still has to do on its output, and the manifest they were planned against."""

    units: list[InputUnit]
    manifest: dict[str, dict[str, Any]]
    planned: int = 0  # units the input yields after excluding committed files (done ones included)
    changed: list[str] = field(default_factory=list)  # committed units whose inputs changed: redone
    deleted_uris: list[str] = field(default_factory=list)  # committed inputs no longer listed
    changed_uris: list[str] = field(default_factory=list)  # committed inputs whose stamp differs
    damaged: dict[str, str] = field(default_factory=dict)  # manifest entry → why it is not trusted


def plan_remaining(config: TokenizeConfig, fs: Any = None, layout: OutputLayout | None = None) -> WorkPlan:
    """Plan `config.input` minus what `layout` has committed (one place: tokenize, plan, verify)."""
    return plan_against_output(
        config.input,
        fs,
        layout,
        storage_options=config.storage_options,
        kind=config.input_kind,
        files_per_unit=config.files_per_unit,
        glob=config.glob,
        output=config.output or None,
        id_prefix=getattr(config, "id_prefix", None) or "",
    )


def _source_key(unit_info: Mapping[str, Any]) -> tuple[str, str]:
    """What an item id is relative to: the input root (a manifest: the manifest), and the prefix."""
    if unit_info.get("kind") == "manifest":
        place = str((unit_info.get("uris") or [""])[0])
    else:
        place = str(unit_info.get("root") or "")
    return place, str(unit_info.get("id_prefix") or "")


def check_input_output(input_url: str, output: str | None, storage_options: Mapping[str, Any]) -> None:
    """A job never reads its own output: an output inside the input is left out of the listing
    (`plan_units(exclude_under=…)`); an input inside the output is refused here."""
    if not output or protocol_of(input_url) != protocol_of(output):
        return
    _, input_path = open_filesystem(input_url, storage_options)
    _, output_path = open_filesystem(output, storage_options)
    input_path, output_path = input_path.rstrip("/"), output_path.rstrip("/")
    if input_path == output_path or input_path.startswith(output_path + "/"):
        raise ConfigError(
            f"input {redact_uri(input_url)} lies inside the output {redact_uri(output)}: "
            "a job must not read its own output; pick separate folders"
        )


def plan_against_output(
    input_url: str,
    fs: Any,
    layout: OutputLayout | None,
    *,
    storage_options: Mapping[str, Any],
    kind: str,
    files_per_unit: int,
    glob: str | None,
    output: str | None = None,
    id_prefix: str = "",
) -> WorkPlan:
    """Committed units are skipped by id, and files already inside committed `files` units by URI,
    so new files added to the input are planned into new units. A committed unit whose inputs
    changed since (size, mtime or ETag differ from its recorded stamps) is planned again under its
    own id, so its recommit replaces the stale rows. Without a layout nothing is done."""
    check_input_output(input_url, output, storage_options)
    found = with_retries(lambda: read_manifest_report(fs, layout)) if layout is not None else ManifestRead()
    manifest = found.entries
    recorded: dict[str, tuple[str, str]] = {}  # committed file URI → (unit id, recorded stamp)
    for unit_id, entry in manifest.items():
        info = entry.get("unit_info") or {}
        if info.get("kind") != "files":
            continue
        uris = [str(u) for u in info.get("uris") or ()]
        stamps = [str(x) for x in info.get("stamps") or ()]
        for index, uri in enumerate(uris):
            recorded[uri] = (unit_id, stamps[index] if index < len(stamps) else "")
    seen: dict[str, str] = {}
    planned = plan_units(
        input_url,
        storage_options=storage_options,
        kind=kind,
        files_per_unit=files_per_unit,
        exclude_uris=frozenset(recorded),
        glob=glob,
        exclude_under=output,
        id_prefix=id_prefix,
        seen=seen,
    )
    _refuse_colliding_roots(planned, manifest, input_url)
    units = []
    changed: list[str] = []
    changed_uris: list[str] = []
    for unit in planned:
        entry = manifest.get(unit.unit_id)
        if entry is None:
            units.append(unit)
            continue
        old = [str(x) for x in (entry.get("unit_info") or {}).get("stamps") or ()]
        if unit.kind != "manifest" and old and unit.stamps and list(unit.stamps) != old:
            units.append(unit)  # the shard or file changed since it was committed
            changed.append(unit.unit_id)
            changed_uris.append(unit.uris[0])
    # Files units: any recorded file whose stamp changed sends its whole unit back to work.
    stale: dict[str, InputUnit] = {}
    for uri, (unit_id, stamp) in recorded.items():
        current = seen.get(uri)
        if current is None or not stamp or current == stamp:
            continue
        changed_uris.append(uri)
        if unit_id in stale:
            continue
        unit = InputUnit.from_dict(manifest[unit_id]["unit_info"])
        keep = [i for i, u in enumerate(unit.uris) if u in seen]  # deleted files leave the unit
        stale[unit_id] = dataclasses.replace(
            unit, uris=tuple(unit.uris[i] for i in keep), stamps=tuple(seen[unit.uris[i]] for i in keep)
        )
    units.extend(stale[unit_id] for unit_id in sorted(stale))
    changed.extend(sorted(stale))
    deleted = sorted(uri for uri in recorded if uri not in seen)
    return WorkPlan(
        units, manifest, len(planned), changed, deleted, sorted(changed_uris), dict(found.damaged)
    )


def _refuse_colliding_roots(
    planned: Sequence[InputUnit], manifest: Mapping[str, dict[str, Any]], input_url: str
) -> None:
    """Ids are relative to their input root: a second root with the same id prefix could give two
    different items one id, so it is refused (one line) unless namespaced with `id_prefix`."""
    if not planned or not manifest:
        return
    mine = _source_key(planned[0].to_dict())
    for entry in manifest.values():
        theirs = _source_key(entry.get("unit_info") or {})
        if theirs[0] and theirs[1] == mine[1] and theirs[0] != mine[0]:
            raise ConfigError(
                f"this output already holds items read from {redact_uri(theirs[0])}; items of "
                f"{redact_uri(input_url)} could get the same ids: give them a namespace with "
                "--set id_prefix=NAME/ (or write to another output)"
            )
