"""Fixtures for the official reference data in tests/data/golden/ (see its README).

The data is in the repository, so the golden tests run in a fresh clone. The full-size weights (4.2 GB)
are not stored: the first test that needs them regenerates them with our deterministic generator
(`codec.testing.golden_weights`), which checks every tensor against the published digests, and keeps
them in `.cache/golden-rate50-seed1` (or `$SEMTOK_GOLDEN_WEIGHTS`) for later runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from codec.testing.golden_weights import GENERATOR, read_json, tensor_digest

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DATA = REPO / "tests" / "data" / "golden"
MANIFEST = GOLDEN_DATA / "manifest_rate50.json.gz"
WEIGHT_DIGESTS = GOLDEN_DATA / "weights_digests_seed1.json.gz"
GOLDEN_SEED = 1
DECODE_SEED = 1234  # the seed of the official decode run (README of the data)


def shared_dir() -> Path:
    """The read-only shared/ folder beside the checkout (infra schemas); the golden tests don't use it."""
    for candidate in (REPO / "shared", REPO.parent / "shared"):
        if candidate.is_dir():
            return candidate
    pytest.skip("shared/ not found beside the checkout")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_DATA


@pytest.fixture(scope="session")
def golden_input(golden_dir: Path) -> torch.Tensor:
    data, rate = soundfile.read(golden_dir / "input_a.wav", dtype="float32")
    assert rate == 16000
    return torch.from_numpy(data)


def published_weight_digests() -> dict:
    return read_json(WEIGHT_DIGESTS)


def digests_fingerprint(document: dict) -> str:
    """What the generator's completion marker records about the digests it was checked against."""
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def weights_marker(folder: Path) -> dict | None:
    """The completion record of a generated weights folder, if our generator wrote and checked it."""
    try:
        record = json.loads((folder / ".complete").read_text())
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(record, dict)
        and record.get("generator") == GENERATOR
        and record.get("seed") == GOLDEN_SEED
        and record.get("mismatched") == 0
        and record.get("published_digests_sha256") == digests_fingerprint(published_weight_digests())
    )
    return record if ok else None


@pytest.fixture(scope="session")
def golden_weights() -> Path:
    """Folder with encoder.ckpt/decoder.ckpt/codebook_idx, seed 1, every tensor digest-checked."""
    out = Path(os.environ.get("SEMTOK_GOLDEN_WEIGHTS", REPO / ".cache" / "golden-rate50-seed1"))
    if weights_marker(out) is None:
        (out / ".complete").unlink(missing_ok=True)
        # ~1 min, 3.2 GB peak memory, 4.2 GB on disk; a separate process so the memory goes back
        subprocess.run(
            [
                sys.executable,
                "-m",
                "codec.testing.golden_weights",
                "--manifest",
                str(MANIFEST),
                "--seed",
                str(GOLDEN_SEED),
                "--out",
                str(out),
                "--check",
                str(WEIGHT_DIGESTS),
                "--marker",
                str(out / ".complete"),
            ],
            check=True,
            cwd=REPO,
        )
        assert weights_marker(out) is not None
    return out


@functools.cache
def _reference(golden_dir: Path) -> dict[str, np.ndarray]:
    with np.load(golden_dir / "reference.npz") as archive:
        return {name: archive[name] for name in archive.files}


def load_npy(golden_dir: Path, name: str) -> np.ndarray:
    """A stored reference array: `<name>.npy` in the folder, else from reference.npz."""
    path = golden_dir / f"{name}.npy"
    if path.exists():
        return np.load(path)
    stored = _reference(golden_dir)
    if name not in stored:
        raise KeyError(f"{name} is not stored in full (see tests/data/golden/README.md); use its digest")
    return stored[name].copy()


def reference_digest(golden_dir: Path, name: str) -> str:
    """Digest (`tensor_digest`) of an array of the official run, stored or not."""
    return json.loads((golden_dir / "digests.json").read_text())["arrays"][name]


def assert_official(golden_dir: Path, name: str, array: np.ndarray | torch.Tensor) -> None:
    """`array` is bit for bit the official `name` (dtype, shape and every byte)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    assert tensor_digest(array) == reference_digest(golden_dir, name), (
        f"{name}: {array.dtype} {array.shape} is not identical to the official array"
    )


def official_noise(golden_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """x_T [1, 8, 256, 16] and the 50 step noises [50, 8, 256, 16] of the official decode, redrawn
    from seed 1234 in the official order and checked bit for bit against the stored digests."""
    generator = torch.Generator().manual_seed(DECODE_SEED)
    x_t = torch.randn(1, 8, 256, 16, generator=generator)
    steps = torch.cat([torch.randn(1, 8, 256, 16, generator=generator) for _ in range(50)])
    np.testing.assert_array_equal(x_t.numpy(), load_npy(golden_dir, "x_T"))
    assert_official(golden_dir, "step_noise", steps)
    return x_t, steps


def official_decoded(golden_dir: Path) -> np.ndarray:
    """The official decode output [1, 1, 161280]: the first 161280 samples of window 0's vocoder output."""
    decoded = load_npy(golden_dir, "vocoder_wave_window0")[:161280].reshape(1, 1, -1)
    assert_official(golden_dir, "decoded", decoded)
    return decoded


def centroid_table(weights: Path) -> np.ndarray:
    path = weights / read_json(MANIFEST)["codebook"]["path"]
    return np.load(path, mmap_mode="r")


def official_intermediate(golden_dir: Path, name: str, weights: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(reference, rows) for one encoder stage: rows is None when the whole array is compared, else the
    row indices the stored subset holds. Rebuilt arrays are checked against the official digests."""
    if name == "pooled_features":  # rate-50 pooling concatenates frequency-patch pairs: a reshape
        pooled = load_npy(golden_dir, "audiomae_features").reshape(256, 1536)
        assert_official(golden_dir, name, pooled)
        return pooled, None
    if name == "lstm_input":  # [pooled ‖ centroid of the semantic id], padding rows 250–255 all −1
        pooled, _ = official_intermediate(golden_dir, "pooled_features", weights)
        ids = load_npy(golden_dir, "semantic_ids")
        lstm_input = np.concatenate([pooled, centroid_table(weights)[ids]], axis=1)
        lstm_input[250:] = -1
        assert_official(golden_dir, name, lstm_input)
        return lstm_input, None
    if name == "lstm_output":
        return load_npy(golden_dir, "lstm_output_rows"), load_npy(golden_dir, "lstm_output_row_index")
    return load_npy(golden_dir, name), None
