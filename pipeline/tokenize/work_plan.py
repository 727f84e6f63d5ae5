"""What a job still has to do on its output: the input's units minus what the manifest committed.

One place plans against an output (tokenize, plan, verify), so a rerun, `semtok plan` and
`semtok verify --input` agree on committed, changed, deleted and new inputs. `PlanStream` yields
the units while the input is listed (`iter_units`), so a run starts encoding before a listing of
millions of objects ends; `plan_against_output` materialises the same stream for verify and plan.
The manifest is read once (one index GET once compacted) and held for the whole listing, its
files units' URIs and stamps as 128-bit digests (`CommittedFiles`, ~40 bytes per committed file):
that, not the listing, is the planner's memory. Units whose files changed or vanished are read
again whole once the listing ends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import ConfigError, TokenizeConfig
from pipeline.dataset.committed_files import CommittedFiles
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.manifest import SLIM, ManifestRead, read_manifest_report
from pipeline.io.sources import iter_units
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


class PlanStream:
    """The units a job still has to do, yielded while the input is listed; iterate once.

    Order and content are `plan_against_output`'s: new and changed units in listing order, then
    the committed `files` units whose files changed (known only once the listing ends). `planned`,
    `changed`, `changed_uris` and `deleted_uris` are final once `done`; `manifest` and `damaged`
    (the manifest read) are there from the start. Committed units are skipped by id, and files
    already inside committed `files` units by URI, so new files added to the input are planned
    into new units. A committed unit whose inputs changed since (size, mtime or ETag differ from
    its recorded stamps) is planned again under its own id, so its recommit replaces the stale
    rows. Without a layout nothing is done."""

    def __init__(
        self,
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
    ) -> None:
        check_input_output(input_url, output, storage_options)
        self.input_url = input_url
        self._fs, self._layout = fs, layout
        # The committed files units' input files, compact (`CommittedFiles`): the entries held in
        # `manifest` drop their `uris` and `stamps` as they are read (`_slim`), so a rerun over
        # 10^7 committed files holds ~40 bytes per file, not the entries' lists.
        self._files = CommittedFiles()
        found = ManifestRead()
        if layout is not None:
            found = with_retries(lambda: read_manifest_report(fs, layout, shape=self._slim))
        self._files.retain(found.entries)  # units the read handed over and then dropped: not committed
        self._files.freeze()
        self.manifest: dict[str, dict[str, Any]] = found.entries
        self.damaged: dict[str, str] = dict(found.damaged)
        self._units = iter_units(
            input_url,
            storage_options=storage_options,
            kind=kind,
            files_per_unit=files_per_unit,
            exclude_uris=self._files,
            glob=glob,
            exclude_under=output,
            id_prefix=id_prefix,
            seen=self._files,
        )
        self.planned = 0  # units the input yields after excluding committed files (done ones included)
        self.changed: list[str] = []  # committed units whose inputs changed: redone
        self.changed_uris: list[str] = []  # committed inputs whose stamp differs
        self.deleted_uris: list[str] = []  # committed inputs no longer listed
        self.yielded = 0  # units handed out (to do)
        self.done = False

    def _slim(self, unit_id: str, entry: dict[str, Any]) -> dict[str, Any]:
        """What `manifest` holds of an entry: a files unit's URIs and stamps go to `_files`."""
        info = entry.get("unit_info") or {}
        if info.get("kind") != "files":
            return entry
        uris = [str(u) for u in info.get("uris") or ()]
        self._files.add_unit(unit_id, uris, [str(x) for x in info.get("stamps") or ()])
        slim = {k: v for k, v in info.items() if k not in ("uris", "stamps")}
        slim["n_uris"] = len(uris)
        return {**entry, "unit_info": slim, SLIM: True}

    def full_entries(self, unit_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The whole manifest entries of `unit_ids` (`manifest` holds files units slimmed): one
        more manifest read, keeping only these."""
        wanted = set(unit_ids)
        if not wanted or self._layout is None:
            return {}
        fs, layout = self._fs, self._layout

        def keep(unit_id: str, entry: dict[str, Any]) -> dict[str, Any] | None:
            return entry if unit_id in wanted else None

        return with_retries(lambda: read_manifest_report(fs, layout, shape=keep)).entries

    def __iter__(self) -> Iterator[InputUnit]:
        for unit in self._units:
            if not self.planned:
                _refuse_colliding_roots([unit], self.manifest, self.input_url)
            self.planned += 1
            entry = self.manifest.get(unit.unit_id)
            if entry is not None:
                old = [str(x) for x in (entry.get("unit_info") or {}).get("stamps") or ()]
                if unit.kind == "manifest" or not old or not unit.stamps or list(unit.stamps) == old:
                    continue
                self.changed.append(unit.unit_id)  # the shard or file changed since it was committed
                self.changed_uris.append(unit.uris[0])
            self.yielded += 1
            yield unit
        # Files units: any recorded file whose stamp changed sends its whole unit back to work;
        # the few units with changed or vanished files are read again whole to name them.
        files = self._files
        changed_units = files.changed_units()
        involved = self.full_entries(changed_units | files.unseen_units())
        stale: dict[str, InputUnit] = {}
        for unit_id, full in sorted(involved.items()):
            info = full.get("unit_info") or {}
            uris = [str(u) for u in info.get("uris") or ()]
            recorded = [str(x) for x in info.get("stamps") or ()]
            self.deleted_uris += [uri for uri in uris if not files.seen(uri)]
            self.changed_uris += [uri for uri in uris if files.is_changed(uri)]
            if unit_id not in changed_units:
                continue
            unit = InputUnit.from_dict({**info, "unit_id": unit_id})
            keep = [i for i, uri in enumerate(uris) if files.seen(uri)]  # deleted files leave the unit
            stale[unit_id] = dataclasses.replace(
                unit,
                uris=tuple(uris[i] for i in keep),
                stamps=tuple(
                    files.current_stamp(uris[i]) or (recorded[i] if i < len(recorded) else "") for i in keep
                ),
            )
        self.changed.extend(sorted(stale))
        self.changed_uris.sort()
        self.deleted_uris.sort()
        self.done = True
        for unit_id in sorted(stale):
            self.yielded += 1
            yield stale[unit_id]

    @property
    def skipped(self) -> int:
        """Committed units this plan leaves alone (final once `done`)."""
        return len(set(self.manifest) - set(self.changed))


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
    """`PlanStream`, materialised: every unit to do, and what the listing found changed or gone."""
    stream = PlanStream(
        input_url,
        fs,
        layout,
        storage_options=storage_options,
        kind=kind,
        files_per_unit=files_per_unit,
        glob=glob,
        output=output,
        id_prefix=id_prefix,
    )
    units = list(stream)
    return WorkPlan(
        units,
        stream.manifest,
        stream.planned,
        stream.changed,
        stream.deleted_uris,
        stream.changed_uris,
        stream.damaged,
    )


def stream_remaining(config: TokenizeConfig, fs: Any, layout: OutputLayout) -> PlanStream:
    """`plan_remaining`, streaming: what `run_tokenize` iterates."""
    return PlanStream(
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
