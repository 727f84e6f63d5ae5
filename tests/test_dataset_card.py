"""The dataset card: Hugging Face Hub front matter that `datasets` reads, and the markdown it explains.

The end-to-end test loads a real finished output (the session's `tokenized_output`) through the
card's own configs, as the Hub's viewer would: no data_files given by the caller.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from datasets import Features, load_dataset

from pipeline.dataset.card import SIZE_CATEGORIES, hub_metadata, render_dataset_card
from pipeline.dataset.layout import OutputLayout, dataset_version
from pipeline.dataset.manifest import load_errors, load_tokens
from pipeline.dataset.parquet_writer import ERRORS_SCHEMA, tokens_schema
from pipeline.io.storage import open_filesystem

FP = {
    "codec": "semanticodec",
    "weights": "random:0",
    "token_rate": 50,
    "frame_rate": 25,
    "semantic_vocab_size": 16384,
    "acoustic_vocab_size": 8192,
    "sample_rate": 16000,
    "channel_policy": "first",
}


def _split(text: str) -> tuple[dict, str]:
    """(front matter, markdown): the card must open with the YAML block, as the Hub requires."""
    assert text.startswith("---\n")
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_front_matter_configs_features_and_tags():
    counts = {"units": 2, "items": 5, "token_rows": 4, "error_rows": 1, "audio_hours": 0.01}
    meta, body = _split(render_dataset_card(FP, counts=counts, random_weights=True))
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert configs["default"]["default"] is True
    assert configs["default"]["data_files"] == [{"split": "train", "path": "tokens/*.parquet"}]
    assert configs["errors"]["data_files"] == [{"split": "train", "path": "errors/*.parquet"}]
    # the features are the writer's schemas, in the names `datasets` uses
    features = {i["config_name"]: Features._from_yaml_list(i["features"]) for i in meta["dataset_info"]}
    assert features["default"] == Features.from_arrow_schema(tokens_schema())
    assert features["errors"] == Features.from_arrow_schema(ERRORS_SCHEMA)
    assert "random-weights" in meta["tags"] and "audio" in meta["tags"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["pretty_name"] == f"Audio tokens {dataset_version(FP)}"
    assert "license" not in meta  # the source audio's terms apply; semtok does not know them
    # the markdown is what the card always said
    assert body.lstrip().startswith("# Audio tokens: `")
    assert body.count("RANDOMLY INITIALISED") == 2  # top and bottom
    assert "| token_rows | 4 |" in body and "| audio_hours | 0.01 |" in body
    assert "list<uint16>" in body and "read_parquet" in body and '"weights":"random:0"' in body


def test_front_matter_without_errors_or_counts():
    meta, body = _split(render_dataset_card({**FP, "weights": "hf:x/y"}, counts={}, random_weights=False))
    assert [c["config_name"] for c in meta["configs"]] == ["default"]
    assert [i["config_name"] for i in meta["dataset_info"]] == ["default"]
    assert "size_categories" not in meta and "random-weights" not in meta["tags"]
    assert "RANDOMLY" not in body and "_No counts recorded._" in body


@pytest.mark.parametrize(
    ("rows", "bucket"), [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (2_500_000, "1M<n<10M")]
)
def test_size_category(rows, bucket):
    meta = hub_metadata("v", counts={"token_rows": rows}, random_weights=False)
    assert meta["size_categories"] == [bucket]
    assert bucket in dict((name, bound) for bound, name in SIZE_CATEGORIES)


def test_load_dataset_reads_the_version_folder_through_the_card(tokenized_output, tmp_path: Path):
    fs, root = open_filesystem(tokenized_output.version_url)
    meta, body = _split(fs.cat_file(f"{root}/README.md").decode("utf-8"))
    assert {c["config_name"] for c in meta["configs"]} == {
        "default",
        "errors",
    }  # the output has a broken file
    assert "random-weights" in meta["tags"]

    layout = OutputLayout(tokenized_output.root, Path(root).name)
    tokens, errors = load_tokens(fs, layout), load_errors(fs, layout)
    cache = str(tmp_path / "hf-cache")
    train = load_dataset(tokenized_output.version_url, split="train", cache_dir=cache)
    assert train.features == Features.from_arrow_schema(tokens_schema())
    assert sorted(train["id"]) == sorted(tokens.column("id").to_pylist())
    by_id = {row["id"]: row for row in train}
    for row in tokens.to_pylist():
        assert by_id[row["id"]]["semantic_tokens"] == row["semantic_tokens"]
        assert by_id[row["id"]]["n_frames"] == row["n_frames"] == len(row["acoustic_tokens"])
    failed = load_dataset(tokenized_output.version_url, "errors", split="train", cache_dir=cache)
    assert sorted(failed["id"]) == sorted(errors.column("id").to_pylist()) and failed.num_rows == 1
