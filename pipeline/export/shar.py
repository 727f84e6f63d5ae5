"""`--to shar`: a lhotse Shar folder of token-only cuts, written with lhotse's own `SharWriter`.

One shard per committed unit, numbered by the plan (`cuts.000007.jsonl.gz` + `codes.000007.tar`).
Each cut is a `MonoCut` with no recording (token-only data; lhotse allows it and
`CutSet.from_shar` loads it):

    id          the item id
    duration    the item's audio duration in seconds
    custom      source_uri (str), metadata (the item's metadata object)
    codes       an lhotse `Array`, uint16 [n_frames, 2]: column 0 the semantic token, column 1 the
                acoustic token of each codec frame (frame_rate frames per second, in export.json);
                `cut.load_codes()` returns it whole

`codes` is a plain `Array`, not a `TemporalArray`: lhotse slices a TemporalArray to the cut's
duration on load, rounding frames, which would drop the last frame of items whose frame count
rounds the other way; a token LM wants the exact sequence.

The export's state folder is `cuts.semtok-export/`: `CutSet.from_shar(in_dir=DIR)` treats every
name in DIR as a field named by its first dot-part, except that among names starting `cuts.` it
reads only `.jsonl` ones, so this is the one kind of name it skips (tests load the folder to keep
that true).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, ClassVar

import numpy as np

from pipeline.export.base import ExportPlan, FinishOutput, PartOutput, UnitRows, iter_items
from pipeline.export.state import ExportState, PartFile

CODES_FIELD = "codes"
CODES_LAYOUT = "uint16 [n_frames, 2]: column 0 semantic token, column 1 acoustic token"


def _shard_suffix(index: int) -> str:
    return f".{index:06d}"


def shard_names(index: int) -> tuple[str, str]:
    """(codes tar, cuts manifest) of shard `index`, as SharWriter names them."""
    suffix = _shard_suffix(index)
    return f"{CODES_FIELD}{suffix}.tar", f"cuts{suffix}.jsonl.gz"


class SharFormat:
    """lhotse Shar: cuts + a `codes` array field, one shard per unit."""

    name: ClassVar[str] = "shar"
    state_dir: ClassVar[str] = "cuts.semtok-export"

    def __init__(self, fingerprint: dict[str, Any]) -> None:
        self.frame_rate = fingerprint.get("frame_rate")

    def options(self) -> dict[str, Any]:
        return {"fields": {CODES_FIELD: "numpy"}, "codes_layout": CODES_LAYOUT}

    def write_part(self, rows: UnitRows) -> PartOutput:
        from lhotse import MonoCut
        from lhotse.features.io import MemoryRawWriter
        from lhotse.shar import SharWriter

        codes_name, cuts_name = shard_names(rows.unit.index)
        n_frames = 0
        with tempfile.TemporaryDirectory(prefix="semtok-shar-") as tmp:
            # shard_size=None: one shard, named with the plan's index instead of lhotse's counter
            with (
                SharWriter(
                    tmp,
                    fields={CODES_FIELD: "numpy"},
                    shard_size=None,
                    shard_suffix=_shard_suffix(rows.unit.index),
                ) as writer,
                MemoryRawWriter() as memory,
            ):
                for item in iter_items(rows.table):
                    cut = MonoCut(
                        id=item.id,
                        start=0.0,
                        duration=item.duration_s,
                        channel=0,
                        custom={"source_uri": item.source_uri, "metadata": json.loads(item.metadata)},
                    )
                    codes = np.stack([item.semantic, item.acoustic], axis=1).astype(np.uint16, copy=False)
                    cut.custom[CODES_FIELD] = memory.store_array(key=item.id, value=codes)
                    writer.write(cut)
                    n_frames += item.n_frames
            written = set(os.listdir(tmp))
            if written != {codes_name, cuts_name}:
                raise RuntimeError(
                    f"lhotse SharWriter wrote {sorted(written)}, not {codes_name}, {cuts_name}"
                )
            files = []
            for name in (codes_name, cuts_name):  # the cuts manifest last: it lists the codes
                with open(os.path.join(tmp, name), "rb") as handle:
                    files.append(PartFile(name, handle.read()))
        return PartOutput(files=files, info={"n_frames": n_frames})

    def finish(self, state: ExportState, plan: ExportPlan, parts: list[dict[str, Any]]) -> FinishOutput:
        """Nothing to add to the shards; the index lists them per field, for
        `CutSet.from_shar(fields=...)` on stores `in_dir=` cannot list (it takes local paths)."""
        fields: dict[str, list[str]] = {"cuts": [], CODES_FIELD: []}
        for part in parts:
            codes_name, cuts_name = shard_names(int(part["index"]))
            fields["cuts"].append(cuts_name)
            fields[CODES_FIELD].append(codes_name)
        return FinishOutput(
            info={
                "shar_fields": fields,
                "codes_layout": CODES_LAYOUT,
                "frame_rate": self.frame_rate,
                "load": "lhotse.CutSet.from_shar(in_dir=DIR); cut.load_codes() -> uint16 [n_frames, 2]",
            }
        )

    def cleanup(self, state: ExportState, plan: ExportPlan, parts: list[dict[str, Any]]) -> None:
        return None
