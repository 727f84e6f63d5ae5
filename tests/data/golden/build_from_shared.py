"""Rebuild this folder's trimmed reference data from the full golden set (shared/golden/).

    python tests/data/golden/build_from_shared.py /path/to/shared/golden

Only used by whoever refreshes the data; the tests read the files this writes (see README.md here).
Every array of the full set gets a digest in `digests.json`; arrays that the tests can rebuild exactly
(reshapes, concatenations, prefixes, the seeded noise) or only check bit for bit are not stored.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from codec.testing.golden_weights import tensor_digest

HERE = Path(__file__).resolve().parent
# Stored in full in reference.npz (compared with a tolerance, or fed to a stage as its input).
FULL = [
    "tokens",
    "semantic_ids",
    "acoustic_ids",
    "audiomae_features",
    "linear_output",
    "x_T",
    "unet_first_t",
    "unet_first_out_uncond",
    "unet_first_out_cond",
    "final_latent",
    "vae_mel",
    "vocoder_wave_window0",
]
# lstm_output: only these rows (start, middle, every 32nd, the end incl. the padding boundary at 250).
LSTM_ROWS = sorted({0, 1, 2, 3, 126, 127, 128, 129, *range(0, 256, 32), *range(248, 256)})
# Copied as they are: fbank.npy stays a plain .npy because tests/test_fbank.py loads it by name.
COPIED = ["input_a.wav", "fbank.npy", "ddim_schedule.json", "run_info.json"]


def gzip_json(source: Path, target: Path) -> None:
    with gzip.GzipFile(target, "wb", compresslevel=9, mtime=0) as out:
        out.write(source.read_bytes())


def main(shared_golden: str) -> None:
    root = Path(shared_golden)
    run = root / "rate50_seed1"
    arrays = {path.stem: np.load(path) for path in sorted(run.glob("*.npy"))}
    for name in COPIED:
        shutil.copyfile(run / name, HERE / name)
    stored = {name: arrays[name] for name in FULL}
    stored["lstm_output_rows"] = arrays["lstm_output"][LSTM_ROWS]
    stored["lstm_output_row_index"] = np.asarray(LSTM_ROWS, dtype=np.int64)
    np.savez_compressed(HERE / "reference.npz", **stored)
    gzip_json(root / "manifest_rate50.json", HERE / "manifest_rate50.json.gz")
    gzip_json(root / "weights_digests_seed1.json", HERE / "weights_digests_seed1.json.gz")
    digests = {
        "format": "sha256 of '<dtype.str>|<shape list>|' + raw bytes (golden_weights.tensor_digest)",
        "arrays": {name: tensor_digest(array) for name, array in arrays.items()},
        "source_files_sha256": {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(
                [*run.iterdir(), root / "manifest_rate50.json", root / "weights_digests_seed1.json"]
            )
        },
    }
    (HERE / "digests.json").write_text(json.dumps(digests, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
