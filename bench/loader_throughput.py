"""Training-loader throughput (tokens/s) from local disk and from a SeaweedFS S3 server, against
plain pyarrow reading the same manifest-listed files. Prints one JSON object.

The output is committed directly with `commit_unit` (random tokens of realistic lengths, the names
and manifest entries the tokenize job writes), so making it takes seconds. Figures per store:
- `pyarrow`: read the two token columns of every listed file (`pq.read_table` through fsspec),
  count tokens: the floor of what any reader pays;
- `loader`: `TokenDataset` in one process (shuffle buffer, per-item numpy arrays, metadata JSON);
- `loader_packed`: the same plus `TokenLayout.encode` and packing into `--seq-len` sequences;
- `loader_workers`: `TokenLoader` with `--workers` DataLoader worker processes (items).
Tokens = semantic + acoustic tokens (2 per frame; packed figures add BOS/EOS). Loader figures
include planning (reading the manifest) and, for workers, starting the worker processes.

    python -m bench.loader_throughput                         # local + S3, small (repo root)
    python -m bench.loader_throughput --units 40 --items 500 --frames 500 --no-s3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq

from pipeline.dataset.commit import commit_unit
from pipeline.dataset.layout import OutputLayout
from pipeline.training.loader import build_dataset, build_loader
from pipeline.training.source import resolve_output
from pipeline.training.token_layout import TokenLayout

FINGERPRINT = {
    "codec": "semanticodec",
    "token_rate": 50,
    "semantic_vocab_size": 16384,
    "acoustic_vocab_size": 8192,
}


def make_output(root: str, *, units: int, items: int, frames: int, seed: int = 0) -> None:
    """`units` committed units of `items` items, lengths uniform in [frames/2, 3·frames/2]."""
    fs = fsspec.filesystem("file")
    layout = OutputLayout.for_fingerprint(root, FINGERPRINT)
    rng = np.random.default_rng(seed)
    for unit in range(units):
        rows = []
        for k in range(items):
            n = int(rng.integers(frames // 2, frames * 3 // 2 + 1))
            rows.append(
                {
                    "id": f"u{unit:04d}-{k:05d}",
                    "semantic_tokens": rng.integers(0, 16384, n),
                    "acoustic_tokens": rng.integers(0, 8192, n),
                    "n_frames": n,
                    "duration_s": n / 25.0,
                    "source_uri": f"/in/{unit}/{k}.wav",
                    "metadata": {"speaker": k % 7},
                }
            )
        commit_unit(fs, layout, f"unit{unit:04d}", token_rows=rows, fingerprint=FINGERPRINT)


def timed(fn: Callable[[], int], repeat: int) -> dict[str, Any]:
    """Best of `repeat` runs of fn() → tokens counted."""
    best, tokens = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        tokens = fn()
        best = min(best, time.perf_counter() - start)
    return {"tokens": tokens, "seconds": round(best, 3), "tokens_per_s": round(tokens / best)}


def measure(url: str, options: dict[str, Any] | None, args: argparse.Namespace) -> dict[str, Any]:
    source = resolve_output(url, storage_options=options)
    files = source.token_files()
    fs = source.fs

    def plain() -> int:
        total = 0
        for path in files:
            with fs.open(path, "rb") as handle:
                table = pq.read_table(handle, columns=["semantic_tokens", "acoustic_tokens"])
            for name in ("semantic_tokens", "acoustic_tokens"):
                total += len(table.column(name).combine_chunks().values)
        return total

    def items() -> int:
        dataset = build_dataset(url, storage_options=options, seed=1)
        return sum(len(i["semantic"]) + len(i["acoustic"]) for i in dataset)

    layout = TokenLayout.for_output(url, storage_options=options)

    def packed() -> int:
        dataset = build_dataset(url, storage_options=options, seed=1, layout=layout, seq_len=args.seq_len)
        return sum(len(s["input_ids"]) for s in dataset)

    def workers() -> int:
        loader = build_loader(url, storage_options=options, seed=1, num_workers=args.workers, batch_size=16)
        return sum(len(s) + len(a) for b in loader for s, a in zip(b["semantic"], b["acoustic"], strict=True))

    return {
        "files": len(files),
        "pyarrow": timed(plain, args.repeat),
        "loader": timed(items, args.repeat),
        "loader_packed": timed(packed, args.repeat),
        "loader_workers": timed(workers, args.repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=8)
    parser.add_argument("--items", type=int, default=200, help="items per unit")
    parser.add_argument("--frames", type=int, default=250, help="mean frames per item (250 = 10 s)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-s3", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="semtok-loader-bench-") as tmp:
        root = str(Path(tmp) / "out")
        start = time.perf_counter()
        make_output(root, units=args.units, items=args.items, frames=args.frames)
        result: dict[str, Any] = {
            "setup": {
                "units": args.units,
                "items": args.units * args.items,
                "mean_frames": args.frames,
                "seq_len": args.seq_len,
                "workers": args.workers,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "make_output_s": round(time.perf_counter() - start, 2),
            },
            "local": measure(root, None, args),
        }
        if not args.no_s3:
            from tests.s3_server import SeaweedS3

            server = SeaweedS3(data_dir=Path(tmp) / "weed")
            server.start()
            try:
                bucket = server.make_bucket("bench-loader")
                s3 = server.filesystem()
                version = OutputLayout.for_fingerprint(root, FINGERPRINT).version
                local_version = Path(root) / version
                for path in local_version.rglob("*"):
                    if path.is_file():
                        s3.put_file(
                            str(path), f"{bucket[5:]}/out/{version}/{path.relative_to(local_version)}"
                        )
                result["s3"] = measure(f"{bucket}/out", server.storage_options, args)
            finally:
                server.stop()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
