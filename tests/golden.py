"""Fixtures for the official reference data in shared/golden/ (see its README).

The full-size weights (4.2 GB) are not stored: the first test that needs them regenerates them with
the deterministic generator, checks every tensor's digest, and keeps them in `.cache/` for later runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    for candidate in (REPO / "shared", REPO.parent / "shared"):
        if (candidate / "golden").is_dir():
            return candidate
    pytest.skip("shared/golden not found beside the checkout")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return shared_dir() / "golden" / "rate50_seed1"


@pytest.fixture(scope="session")
def golden_input(golden_dir: Path) -> torch.Tensor:
    data, rate = soundfile.read(golden_dir / "input_a.wav", dtype="float32")
    assert rate == 16000
    return torch.from_numpy(data)


@pytest.fixture(scope="session")
def golden_weights() -> Path:
    """Folder with encoder.ckpt/decoder.ckpt/codebook_idx made by make_weights.py --seed 1."""
    out = Path(os.environ.get("SEMTOK_GOLDEN_WEIGHTS", REPO / ".cache" / "golden-rate50-seed1"))
    done = out / ".complete"
    if not done.exists():
        golden = shared_dir() / "golden"
        subprocess.run(
            [sys.executable, str(golden / "make_weights.py"), "--manifest",
             str(golden / "manifest_rate50.json"), "--seed", "1", "--out", str(out),
             "--check", str(golden / "weights_digests_seed1.json")],
            check=True,
        )
        done.write_text("ok\n")
    return out


def load_npy(golden_dir: Path, name: str) -> np.ndarray:
    return np.load(golden_dir / f"{name}.npy")
