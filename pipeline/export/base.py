"""What every export format provides to the export driver (`job.py`), and what it is given.

A format turns one committed unit's token rows into the files of one part (`write_part`, called
in worker threads, pure: bytes in, bytes out), then, once every part is committed, writes what
needs them all (`finish`: a dataset card, the concatenated token stream), and may drop scratch
data after the export's index is written (`cleanup`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa

from pipeline.export.state import ExportState, PartFile, PlannedUnit


@dataclass(frozen=True)
class ExportPlan:
    """The snapshot an export writes: fixed by its first run, checked by every rerun."""

    format: str
    options: dict[str, Any]
    source: dict[str, Any]  # url (redacted), version, fingerprint_digest
    fingerprint: dict[str, Any]
    units: list[PlannedUnit]
    created_at: str = ""

    @property
    def n_units(self) -> int:
        return len(self.units)


@dataclass(frozen=True)
class UnitRows:
    """One planned unit's committed token rows (sorted by id, the output's token schema)."""

    unit: PlannedUnit
    table: pa.Table
    plan: ExportPlan = field(repr=False)


@dataclass(frozen=True)
class Item:
    """One token row, tokens as numpy views (no per-token Python objects)."""

    id: str
    semantic: np.ndarray  # uint16 [n_frames]
    acoustic: np.ndarray  # uint16 [n_frames]
    duration_s: float
    source_uri: str
    metadata: str  # the output's JSON string

    @property
    def n_frames(self) -> int:
        return int(self.semantic.shape[0])


def _flat_lists(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A list<uint16> column as (values, row bounds): row i is values[bounds[i]:bounds[i + 1]]."""
    column = table.column(name).combine_chunks()
    lengths = column.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    bounds = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=bounds[1:])
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.uint16, copy=False)
    return values, bounds


def iter_items(table: pa.Table) -> Iterator[Item]:
    """The rows of a token table, in table order (the output sorts each unit by id)."""
    sem, sem_bounds = _flat_lists(table, "semantic_tokens")
    aco, aco_bounds = _flat_lists(table, "acoustic_tokens")
    ids = table.column("id").to_pylist()
    durations = table.column("duration_s").to_pylist()
    uris = table.column("source_uri").to_pylist()
    metadata = table.column("metadata").to_pylist()
    for i, item_id in enumerate(ids):
        yield Item(
            id=item_id,
            semantic=sem[sem_bounds[i] : sem_bounds[i + 1]],
            acoustic=aco[aco_bounds[i] : aco_bounds[i + 1]],
            duration_s=float(durations[i]),
            source_uri=uris[i] or "",
            metadata=metadata[i] or "{}",
        )


@dataclass
class PartOutput:
    """The files of one part, in publish order (its record is published after the last), and
    format-specific facts kept in the part record for `finish`."""

    files: list[PartFile]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinishOutput:
    """Files `finish` published (file records) and facts for the export's index."""

    files: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class ExportFormat(Protocol):
    """One output format of `semtok export`."""

    name: ClassVar[str]
    # the export's state folder inside DIR, a name the format's readers ignore
    state_dir: ClassVar[str]

    def options(self) -> dict[str, Any]:
        """Settings that shape the files (recorded in the plan; a rerun with others is refused)."""
        ...

    def write_part(self, rows: UnitRows) -> PartOutput:
        """The files of one unit's part (may run in several threads at once)."""
        ...

    def finish(self, state: ExportState, plan: ExportPlan, parts: list[dict[str, Any]]) -> FinishOutput:
        """Publish what needs every part (`parts`: the part records in plan order)."""
        ...

    def cleanup(self, state: ExportState, plan: ExportPlan, parts: list[dict[str, Any]]) -> None:
        """Remove scratch data once the export's index is written (best effort)."""
        ...
