"""Wall time of rerunning a finished job: plan + manifest read, no Ray Data execution.

The finished state is N one-file units (files_per_unit=1). By default they are committed directly
with `commit_unit` (one token row each, the names and manifest entries the job would write), which
takes seconds; `--real` runs the tokenize job (tiny codec) to make them instead, which takes
minutes on 2 cores. Then the same job runs again and must encode nothing. Prints figures only.

    python bench/rerun_noop.py --units 1000            # local folder
    python bench/rerun_noop.py --units 1000 --s3       # a local SeaweedFS S3 server
    python bench/rerun_noop.py --units 300 --real
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import TokenizeConfig
from pipeline.dataset.commit import commit_unit
from pipeline.dataset.layout import OutputLayout
from pipeline.io.sources import plan_units
from pipeline.io.storage import open_filesystem
from pipeline.tokenize.fingerprint import job_fingerprint
from pipeline.tokenize.job import RunSummary, run_tokenize

TINY = {"codec_size": "tiny", "weights": "random:0", "token_rate": 50, "semantic_vocab_size": 16384}


def _wav(seed: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    samples = np.random.default_rng(seed).uniform(-0.3, 0.3, 800).astype(np.float32)  # 50 ms
    sf.write(buf, samples, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def build_committed(
    workdir: Path,
    units: int,
    *,
    real: bool = False,
    input_url: str | None = None,
    output_url: str | None = None,
    storage_options: dict[str, Any] | None = None,
    threads: int = 16,
) -> TokenizeConfig:
    """Write `units` tiny wav files and a finished output for them; returns the job's config."""
    src = input_url or str(workdir / "in")
    out = output_url or str(workdir / "out")
    options = dict(storage_options or {})
    in_fs, in_path = open_filesystem(src, options)
    in_fs.makedirs(in_path, exist_ok=True)
    names = [f"{in_path.rstrip('/')}/clip{i:05d}.wav" for i in range(units)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda a: in_fs.pipe_file(a[1], _wav(a[0])), enumerate(names)))
    config = TokenizeConfig(
        input=src, output=out, files_per_unit=1, storage_options=options, progress_interval_s=60, **TINY
    )
    if real:
        run_tokenize(config, stream=io.StringIO())
        return config
    fingerprint = job_fingerprint(config)
    fs, _ = open_filesystem(out, options)
    layout = OutputLayout.for_fingerprint(out, fingerprint)
    planned = plan_units(src, storage_options=options, files_per_unit=1)

    def commit(unit) -> None:
        item_id = unit.uris[0].rsplit("/", 1)[-1]
        row = {
            "id": item_id,
            "semantic_tokens": np.zeros(3, np.uint16),
            "acoustic_tokens": np.zeros(3, np.uint16),
            "n_frames": 3,
            "duration_s": 0.05,
            "source_uri": unit.uris[0],
            "metadata": {},
        }
        commit_unit(
            fs,
            layout,
            unit.unit_id,
            token_rows=[row],
            fingerprint=fingerprint,
            unit_info={**unit.to_dict(), "n_items": 1},
            run_id="bench",
        )

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(commit, planned))
    return config


def time_rerun(config: TokenizeConfig) -> tuple[RunSummary, float]:
    """Run the job again; (summary, wall seconds)."""
    started = time.perf_counter()
    summary = run_tokenize(config, stream=io.StringIO())
    return summary, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--real", action="store_true", help="make the finished state with the real job")
    parser.add_argument("--s3", action="store_true", help="input and output on a local SeaweedFS")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir, server, kwargs = Path(tmp), None, {}
        if args.s3:
            from tests.s3_server import SeaweedS3

            server = SeaweedS3(data_dir=workdir / "weed")
            server.start()
            bucket = server.make_bucket("bench-rerun")
            kwargs = {
                "input_url": f"{bucket}/in",
                "output_url": f"{bucket}/out",
                "storage_options": server.storage_options,
            }
        try:
            started = time.perf_counter()
            config = build_committed(workdir, args.units, real=args.real, **kwargs)
            print(
                f"finished state: {args.units} units ({'real job' if args.real else 'commit_unit'}) "
                f"in {time.perf_counter() - started:.1f} s on {'s3' if args.s3 else 'local disk'}"
            )
            for attempt in range(args.repeat):
                summary, wall = time_rerun(config)
                print(
                    f"rerun {attempt + 1}: {wall:.2f} s wall, units to do {summary.units_planned}, "
                    f"skipped {summary.units_skipped}, items encoded {summary.items}"
                )
        finally:
            if server is not None:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
