"""The README.md dataset card of a dataset version: what the tokens are and how to load them.

Written next to the data so that a folder copied anywhere still explains itself; loud about random
weights, because tokens from an untrained codec look like real tokens and mean nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fsspec

from pipeline.dataset.layout import OutputLayout, canonical_json, dataset_version, publish
from pipeline.dataset.manifest import read_manifest
from pipeline.io.storage import redact_text

RANDOM_WARNING = (
    "> **WARNING: these tokens were made with RANDOMLY INITIALISED codec weights "
    "(`weights = {weights}`).**\n"
    "> They are deterministic but carry no meaning: do not train on them or report results from\n"
    "> them. Re-run with real SemantiCodec weights to get a usable dataset (a new version\n"
    "> folder).\n"
)


def is_random_weights(fingerprint: Mapping[str, Any]) -> bool:
    """The fingerprint's weights field says `random:<seed>` for untrained weights."""
    return str(fingerprint.get("weights", "")).startswith("random")


def _counts_table(counts: Mapping[str, Any]) -> str:
    if not counts:
        return "_No counts recorded._\n"
    lines = ["| count | value |", "|---|---|"]
    for key in sorted(counts):
        value = counts[key]
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {text} |")
    return "\n".join(lines) + "\n"


def render_dataset_card(
    fingerprint: Mapping[str, Any], *, counts: Mapping[str, Any], random_weights: bool
) -> str:
    """Markdown dataset card for one dataset version."""
    fp = dict(fingerprint)
    version = dataset_version(fp)
    semantic_vocab = fp.get("semantic_vocab_size", "the semantic vocabulary size")
    acoustic_vocab = fp.get("acoustic_vocab_size", 8192)
    frame_rate = fp.get("frame_rate", "frame_rate")
    codec = fp.get("codec", "semanticodec")
    parts = [f"# Audio tokens: `{version}`\n"]
    if random_weights:
        parts.append(RANDOM_WARNING.format(weights=fp.get("weights", "random")))
    parts.append(
        f"""
Discrete tokens of an audio corpus, made by the `{codec}` codec (SemantiCodec) with the
`semtok` pipeline. Each item of the input corpus (one audio file, or one member of a tar shard or
one row of a Parquet input) is one row. Items that could not be tokenized are rows of the errors
table, with the stage and reason of the failure.

## Counts

{_counts_table(counts)}
## Token semantics

- `semantic_tokens[t]`: k-means cluster id of the semantic (AudioMAE) feature of frame `t`,
  `0 <= id < {semantic_vocab}`.
- `acoustic_tokens[t]`: vector-quantizer code of the acoustic stream of frame `t`,
  `0 <= id < {acoustic_vocab}`.
- Both lists have length `T = n_frames`; the codec makes `{frame_rate}` (semantic, acoustic)
  pairs per second of audio (so `{fp.get("token_rate", "token_rate")}` tokens per second in all).
- `duration_s` is the input duration after resampling to {fp.get("sample_rate", 16000)} Hz.
- Audio was reduced to mono with channel policy `{fp.get("channel_policy", "first")}`.

## Layout

```
{version}/
  tokens/part-<unit>.parquet   token rows of one input unit
  errors/part-<unit>.parquet   failed items of that unit (only when there were any)
  wds/<unit>.tar               optional WebDataset twin (<key>.tokens.npy, <key>.json)
  _manifest/<unit>.json        one per committed unit: files, row counts, sha256
  runs/<run>.json              one per job run: config, versions, counts, throughput
```

A unit is complete iff its `_manifest/<unit>.json` exists. Files not listed in a manifest entry
(leftovers of an interrupted run) are not part of the dataset; loading `tokens/*.parquet` is
safe once the job that wrote them has finished.

## Schema

Tokens (`tokens/*.parquet`):

| column | type | meaning |
|---|---|---|
| id | string | item id, unique in the dataset |
| semantic_tokens | list<uint16> | semantic token ids, length n_frames |
| acoustic_tokens | list<uint16> | acoustic token ids, length n_frames |
| n_frames | int32 | T |
| duration_s | float64 | input duration in seconds |
| source_uri | string | where the item came from |
| metadata | string | JSON object of metadata carried from the input |

Every token file holds the codec fingerprint (JSON) in its Parquet key-value metadata under the
key `semtok`.

Errors (`errors/*.parquet`): `id`, `source_uri`, `stage`, `reason`, `detail`, all strings.

## Codec fingerprint

```json
{canonical_json(fp)}
```

## Loading

Hugging Face `datasets`:
```python
from datasets import load_dataset
ds = load_dataset("parquet", data_files="{version}/tokens/*.parquet", split="train")
```

`pyarrow.dataset`:
```python
import json, pyarrow.dataset as pads
dset = pads.dataset("{version}/tokens", format="parquet")
table = dset.to_table()
fingerprint = json.loads(dset.schema.metadata[b"semtok"])
```

DuckDB:
```sql
SELECT id, n_frames, len(semantic_tokens) FROM read_parquet('{version}/tokens/*.parquet');
```

Polars:
```python
import polars as pl
df = pl.read_parquet("{version}/tokens/*.parquet")
```

WebDataset (when the tar twin was written):
```python
import webdataset as wds
for sample in wds.WebDataset("{version}/wds/UNIT.tar").decode():
    pairs = sample["tokens.npy"]      # uint16 [T, 2]: (semantic, acoustic)
    info = sample["json"]             # id, source_uri, n_frames, duration_s, metadata
```

Only committed units, read through the manifest:
```python
import fsspec
from pipeline.dataset.commit import load_tokens
from pipeline.dataset.layout import OutputLayout
table = load_tokens(fsspec.filesystem("file"), OutputLayout("OUTPUT", "{version}"))
```
"""
    )
    if random_weights:
        parts.append("\n" + RANDOM_WARNING.format(weights=fp.get("weights", "random")))
    return "".join(parts)


def manifest_counts(fs: fsspec.AbstractFileSystem, layout: OutputLayout) -> dict[str, Any]:
    """Totals over the committed units, for the card."""
    entries = read_manifest(fs, layout).values()
    return {
        "units": len(entries),
        "items": sum(int(e.get("n_items", 0)) for e in entries),
        "token_rows": sum(int(e.get("n_tokens_rows", 0)) for e in entries),
        "error_rows": sum(int(e.get("n_error_rows", 0)) for e in entries),
        "audio_hours": sum(float(e.get("audio_seconds", 0.0)) for e in entries) / 3600.0,
    }


def write_dataset_card(
    fs: fsspec.AbstractFileSystem,
    layout: OutputLayout,
    fingerprint: Mapping[str, Any],
    *,
    counts: Mapping[str, Any] | None = None,
    random_weights: bool | None = None,
) -> str:
    """Publish README.md of the version; counts default to the manifest's totals. The text goes
    through `redact_text`: a weights URL with credentials in the fingerprint never lands there."""
    text = render_dataset_card(
        fingerprint,
        counts=manifest_counts(fs, layout) if counts is None else counts,
        random_weights=is_random_weights(fingerprint) if random_weights is None else random_weights,
    )
    publish(fs, layout.readme_path, redact_text(text).encode("utf-8"))
    return layout.readme_path
