"""`--to hf`: a Hugging Face `datasets` folder: Parquet shards under `data/` and a dataset card.

    data/train-00003-of-00012.parquet   one shard per committed unit (the output's token columns,
                                         `huggingface` features in the file metadata)
    README.md                           YAML front matter (configs/data_files, features, split
                                         sizes) and the codec facts: codec, token rate, vocabularies

`datasets.load_dataset(DIR, split="train")` reads it (the card's `configs` names the files, so the
state folder `_semtok_export/` beside them is never read); so does
`datasets.load_dataset("parquet", data_dir=f"{DIR}/data")`, and so does the Hub once uploaded.
The features come from `datasets` itself (`Features.from_arrow_schema` of the output's schema),
so the card and the files agree with what the library expects.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dataset.parquet_writer import FINGERPRINT_KEY, parquet_bytes, tokens_schema
from pipeline.export.base import ExportPlan, FinishOutput, PartOutput, UnitRows
from pipeline.export.state import ExportState, PartFile

SPLIT = "train"
CONFIG = "default"
DATA_DIR = "data"


def shard_name(index: int, n_shards: int) -> str:
    """The Hub's shard naming (`<split>-00000-of-00012.parquet`)."""
    return f"{DATA_DIR}/{SPLIT}-{index:05d}-of-{n_shards:05d}.parquet"


def _features() -> Any:
    import datasets

    return datasets.Features.from_arrow_schema(tokens_schema())


class HFFormat:
    """A `datasets` Parquet folder with a card."""

    name: ClassVar[str] = "hf"
    state_dir: ClassVar[str] = "_semtok_export"

    def __init__(self, fingerprint: dict[str, Any]) -> None:
        self.fingerprint = dict(fingerprint)
        self._schema: pa.Schema | None = None

    def options(self) -> dict[str, Any]:
        return {"split": SPLIT, "config_name": CONFIG}

    def _file_schema(self) -> pa.Schema:
        """The token schema with `datasets`' features and semtok's fingerprint as metadata."""
        if self._schema is None:
            schema = _features().arrow_schema
            metadata = dict(schema.metadata or {})
            metadata[FINGERPRINT_KEY] = json.dumps(self.fingerprint, sort_keys=True).encode("utf-8")
            self._schema = schema.with_metadata(metadata)
        return self._schema

    def write_part(self, rows: UnitRows) -> PartOutput:
        schema = self._file_schema()
        table = rows.table.select(schema.names).cast(schema)
        rel = shard_name(rows.unit.index, rows.plan.n_units)
        n_frames = int(pc.sum(table.column("n_frames")).as_py() or 0)
        return PartOutput(files=[PartFile(rel, parquet_bytes(table))], info={"n_frames": n_frames})

    def finish(self, state: ExportState, plan: ExportPlan, parts: list[dict[str, Any]]) -> FinishOutput:
        n_items = sum(int(p["n_items"]) for p in parts)
        n_bytes = sum(f["bytes"] for p in parts for f in p["files"])
        card = dataset_card(plan, parts, n_items=n_items, n_bytes=n_bytes)
        record = state.publish("README.md", card.encode("utf-8"))
        return FinishOutput(
            files=[record],
            info={
                "split": SPLIT,
                "data_files": f"{DATA_DIR}/{SPLIT}-*.parquet",
                "load": 'datasets.load_dataset(DIR, split="train")',
            },
        )

    def cleanup(self, state: ExportState, plan: ExportPlan, parts: list[dict[str, Any]]) -> None:
        return None


def dataset_card(plan: ExportPlan, parts: list[dict[str, Any]], *, n_items: int, n_bytes: int) -> str:
    """README.md: YAML front matter made by `datasets`/`huggingface_hub`, then the codec facts."""
    import datasets
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    fp = plan.fingerprint
    splits = datasets.SplitDict()
    splits.add(datasets.SplitInfo(name=SPLIT, num_examples=n_items, num_bytes=n_bytes))
    info = datasets.DatasetInfo(features=_features(), splits=splits, dataset_size=n_bytes)
    data = DatasetCardData(
        configs=[
            {
                "config_name": CONFIG,
                "data_files": [{"split": SPLIT, "path": f"{DATA_DIR}/{SPLIT}-*.parquet"}],
            }
        ],
        tags=["semtok", "audio-tokens", str(fp.get("codec", "codec"))],
    )
    DatasetInfosDict({CONFIG: info}).to_dataset_card_data(data)
    n_frames = sum(int(p.get("info", {}).get("n_frames", 0)) for p in parts)
    seconds = sum(float(p.get("audio_seconds", 0.0)) for p in parts)
    rows = [
        ("codec", fp.get("codec")),
        ("codec size", fp.get("size")),
        ("token rate (tokens/s, both streams)", fp.get("token_rate")),
        ("frame rate (frames/s)", fp.get("frame_rate")),
        ("semantic vocabulary", fp.get("semantic_vocab_size")),
        ("acoustic vocabulary", fp.get("acoustic_vocab_size")),
        ("random weights (tokens meaningless)", bool(fp.get("random_weights"))),
        ("items", n_items),
        ("frames", n_frames),
        ("audio hours", round(seconds / 3600.0, 3)),
        ("shards (one per source unit)", plan.n_units),
        ("source dataset version", plan.source.get("version")),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"""---
{data.to_yaml()}
---

# {plan.source.get("version")}: {fp.get("codec")} tokens (semtok export)

Audio tokenized by semtok with {fp.get("codec")}, exported with
`semtok export --to hf`. Each row is one audio item: two token streams of equal length
`n_frames` (one semantic and one acoustic token per codec frame).

| | |
|---|---|
{table}

Columns: `id` (item id, unique), `semantic_tokens` and `acoustic_tokens` (uint16 lists of length
`n_frames`), `duration_s` (audio seconds), `source_uri` (where the audio was read), `metadata`
(a JSON string carried from the input).

```python
import datasets

ds = datasets.load_dataset("path/to/this/folder", split="{SPLIT}")
# or, without the card: datasets.load_dataset("parquet", data_dir="path/to/this/folder/{DATA_DIR}")
```

Codec fingerprint (what the tokens depend on):

```json
{json.dumps(fp, indent=1, sort_keys=True)}
```
"""
