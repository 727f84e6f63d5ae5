"""Constants and small helpers shared by the tests (one copy instead of one per test file)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import codec.checkpoint as checkpoint
from tests.corpus import (
    CorpusSpec,
    Write,
    build_corpus,
    build_manifest,
    build_parquet_files,
    build_tar_shards,
)

REPO = Path(__file__).resolve().parents[1]

# The tiny random-weight codec the pipeline tests run on (fast on CPU; tokens are meaningless).
TINY_CODEC = {"codec_size": "tiny", "weights": "random:0"}
TINY = {**TINY_CODEC, "token_rate": 50, "semantic_vocab_size": 16384}
TINY_FLAGS = ["--codec-size", "tiny", "--weights", "random:0"]
# A job fingerprint for tests of the output side that need no codec.
FINGERPRINT = {"codec": "semanticodec", "token_rate": 50, "semantic_vocab_size": 16384}
# A fingerprint with every field a real one has (codec description + job fields), for tests of the
# writers, the output layout and commits that read or name versions by it; no codec is loaded.
CODEC_FINGERPRINT = {
    **FINGERPRINT,
    "codec_version": "0.1.0",
    "acoustic_vocab_size": 8192,
    "frame_rate": 25.0,
    "size": "full",
    "weights": "random:0",
    "weights_digest": "00ff",
    "channel_policy": "first",
    "sample_rate": 16000,
}


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 300, module: str = "jobs.cli"
) -> subprocess.CompletedProcess[str]:
    """The `semtok` CLI (or another `python -m` entry point) run as a user runs it: a fresh process
    in the repository root, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def token_row(item_id: str, n: int = 3, source_uri: str = "") -> dict[str, Any]:
    """A valid token row of `n` frames, for tests that commit outputs without running a codec."""
    return {
        "id": item_id,
        "semantic_tokens": np.arange(n, dtype=np.uint16),
        "acoustic_tokens": np.arange(n, dtype=np.uint16),
        "n_frames": n,
        "duration_s": 0.06,
        "source_uri": source_uri or f"file:///x/{item_id}",
        "metadata": {},
    }


def random_token_rows(
    ids: list[str], source_uri: Callable[[str], str], *, seed: int = 0
) -> list[dict[str, Any]]:
    """Token rows of 1..29 random frames each (full vocabularies), one per id, reproducible by seed."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, item_id in enumerate(ids):
        frames = int(rng.integers(1, 30))
        rows.append(
            {
                "id": item_id,
                "semantic_tokens": rng.integers(0, 16384, frames),
                "acoustic_tokens": rng.integers(0, 8192, frames),
                "n_frames": frames,
                "duration_s": frames / 25.0,
                "source_uri": source_uri(item_id),
                "metadata": {"i": i},
            }
        )
    return rows


def build_every_input_kind(
    write_for: Callable[[str], Write], *, long_seconds: float
) -> dict[str, CorpusSpec]:
    """One corpus of each input kind (files, tar shards, Parquet, JSONL and CSV manifests), each
    written through `write_for(<sub-folder>)`."""
    jsonl, csv_spec = build_manifest(write_for("man"))
    return {
        "files": build_corpus(write_for("files"), long_seconds=long_seconds),
        "tars": build_tar_shards(write_for("tars")),
        "parquet": build_parquet_files(write_for("pq")),
        "manifest_jsonl": jsonl,
        "manifest_csv": csv_spec,
    }


def record_checkpoint_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the weight files SemantiCodec reads from now on, in order (a spy on its
    `read_state_dict`; the reads still happen)."""
    original = checkpoint.read_state_dict
    opened: list[str] = []

    def spy(path: Path) -> Any:
        opened.append(Path(path).name)
        return original(path)

    monkeypatch.setattr("codec.semanticodec.read_state_dict", spy)
    return opened
