"""The README.md dataset card of a dataset version: what the tokens are and how to load them.

Written next to the data so that a folder copied anywhere still explains itself; loud about random
weights, because tokens from an untrained codec look like real tokens and mean nothing. It opens
with the Hugging Face Hub's YAML front matter (configs pointing at the token Parquet files, the
features of their schema), so `datasets.load_dataset(<version folder>)` and the Hub's viewer read
the version as it is. The markdown is the Jinja2 template templates/card.md.j2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined

from pipeline.dataset.layout import (
    ERRORS_DIR,
    TOKENS_DIR,
    OutputLayout,
    canonical_json,
    dataset_version,
    publish,
)
from pipeline.dataset.manifest import read_manifest
from pipeline.dataset.parquet_writer import ERRORS_FIELDS, TOKENS_FIELDS
from pipeline.io.storage import redact_text

# Markdown, not HTML: nothing to escape (the old card was plain text too); StrictUndefined so a
# misspelt field fails the tests instead of leaving a blank in every card.
_TEMPLATES = Environment(
    loader=PackageLoader("pipeline.dataset", "templates"),
    autoescape=False,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_TEMPLATES.filters["count_value"] = lambda value: f"{value:.2f}" if isinstance(value, float) else str(value)

#: The Hub's size buckets (number of rows), smallest first; the last one has no upper bound.
SIZE_CATEGORIES: tuple[tuple[float, str], ...] = (
    (1e3, "n<1K"),
    (1e4, "1K<n<10K"),
    (1e5, "10K<n<100K"),
    (1e6, "100K<n<1M"),
    (1e7, "1M<n<10M"),
    (1e8, "10M<n<100M"),
    (1e9, "100M<n<1B"),
    (1e10, "1B<n<10B"),
    (1e11, "10B<n<100B"),
    (1e12, "100B<n<1T"),
    (float("inf"), "n>1T"),
)
_HUB_DTYPES = {"double": "float64", "float": "float32", "halffloat": "float16"}  # pyarrow → datasets names


def is_random_weights(fingerprint: Mapping[str, Any]) -> bool:
    """The fingerprint's weights field says `random:<seed>` for untrained weights."""
    return str(fingerprint.get("weights", "")).startswith("random")


def _hub_features(fields: Sequence[pa.Field]) -> list[dict[str, str]]:
    """`dataset_info.features` of a Parquet schema, in the Hub's YAML form (derived from the
    writer's schema, so the card cannot drift from the files)."""
    features = []
    for field in fields:
        if pa.types.is_list(field.type):
            value = str(field.type.value_type)
            features.append({"name": field.name, "sequence": _HUB_DTYPES.get(value, value)})
        else:
            features.append({"name": field.name, "dtype": _HUB_DTYPES.get(str(field.type), str(field.type))})
    return features


def hub_metadata(version: str, *, counts: Mapping[str, Any], random_weights: bool) -> dict[str, Any]:
    """The card's front matter: a `default` config of the token files (an `errors` config when the
    version has error rows), their features, tags, and the size bucket when the rows are counted."""
    configs = [
        {
            "config_name": "default",
            "default": True,
            "data_files": [{"split": "train", "path": f"{TOKENS_DIR}/*.parquet"}],
        }
    ]
    info = [{"config_name": "default", "features": _hub_features(TOKENS_FIELDS)}]
    if counts.get("error_rows"):
        configs.append(
            {"config_name": "errors", "data_files": [{"split": "train", "path": f"{ERRORS_DIR}/*.parquet"}]}
        )
        info.append({"config_name": "errors", "features": _hub_features(ERRORS_FIELDS)})
    metadata: dict[str, Any] = {
        "pretty_name": f"Audio tokens {version}",
        "tags": ["audio", "audio-tokens", "discrete-tokens", "semanticodec", "semtok"]
        + (["random-weights"] if random_weights else []),
        "task_categories": ["audio-to-audio"],
    }
    if "token_rows" in counts:
        rows = int(counts["token_rows"])
        metadata["size_categories"] = [next(name for bound, name in SIZE_CATEGORIES if rows < bound)]
    metadata["configs"] = configs
    metadata["dataset_info"] = info
    return metadata


def render_dataset_card(
    fingerprint: Mapping[str, Any], *, counts: Mapping[str, Any], random_weights: bool
) -> str:
    """Markdown dataset card for one dataset version, Hub front matter first."""
    fp = dict(fingerprint)
    version = dataset_version(fp)
    front_matter = yaml.safe_dump(
        hub_metadata(version, counts=counts, random_weights=random_weights),
        sort_keys=False,
        allow_unicode=True,
    )
    return _TEMPLATES.get_template("card.md.j2").render(
        front_matter=front_matter,
        version=version,
        random_weights=random_weights,
        weights=fp.get("weights", "random"),
        counts=dict(counts),
        codec=fp.get("codec", "semanticodec"),
        semantic_vocab=fp.get("semantic_vocab_size", "the semantic vocabulary size"),
        acoustic_vocab=fp.get("acoustic_vocab_size", 8192),
        frame_rate=fp.get("frame_rate", "frame_rate"),
        token_rate=fp.get("token_rate", "token_rate"),
        sample_rate=fp.get("sample_rate", 16000),
        channel_policy=fp.get("channel_policy", "first"),
        fingerprint_json=canonical_json(fp),
    )


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
