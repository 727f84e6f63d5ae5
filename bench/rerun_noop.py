"""Wall time of rerunning a finished job and of verifying it, before and after manifest compaction.

The finished state is N one-file units (files_per_unit=1). Three ways to make it:
- `--synth` (the fast one, for 10^5 units): each unit's token Parquet and manifest entry are
  written directly (the same writers and entry shape `commit_unit` uses, without its fsyncs);
- default: `commit_unit` per unit (one token row each), which takes seconds per thousand;
- `--real`: the tokenize job (tiny codec), minutes on 2 cores.
Then, with the entry files only (the end-of-run compaction held off): the same job again (must
encode nothing, starts no Ray), and `semtok verify`; then `semtok compact` (both passes) and the
same again. Prints figures only.

    python bench/rerun_noop.py --units 100000 --synth            # local disk
    python bench/rerun_noop.py --units 5000 --synth --s3         # a local SeaweedFS S3 server
    python bench/rerun_noop.py --units 1000
    python bench/rerun_noop.py --units 300 --real
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

import pipeline.tokenize.job as job
from pipeline.config import TokenizeConfig
from pipeline.dataset.commit import commit_unit
from pipeline.dataset.compaction import compact_output
from pipeline.dataset.layout import OutputLayout, fingerprint_digest
from pipeline.dataset.manifest import json_bytes, read_manifest_report
from pipeline.dataset.parquet_writer import parquet_bytes, tokens_table
from pipeline.io.sources import plan_units
from pipeline.io.storage import open_filesystem
from pipeline.ops.verify import verify
from pipeline.records import InputUnit
from pipeline.tokenize.fingerprint import job_fingerprint
from pipeline.tokenize.job import RunSummary, run_tokenize

TINY = {"codec_size": "tiny", "weights": "random:0", "token_rate": 50, "semantic_vocab_size": 16384}


def _wav(seed: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    samples = np.random.default_rng(seed).uniform(-0.3, 0.3, 800).astype(np.float32)  # 50 ms
    sf.write(buf, samples, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _row(unit: InputUnit) -> dict[str, Any]:
    return {
        "id": unit.uris[0].rsplit("/", 1)[-1],
        "semantic_tokens": np.zeros(3, np.uint16),
        "acoustic_tokens": np.zeros(3, np.uint16),
        "n_frames": 3,
        "duration_s": 0.05,
        "source_uri": unit.uris[0],
        "metadata": {},
    }


def _synth_unit(fs: Any, layout: OutputLayout, fingerprint: dict[str, Any], unit: InputUnit) -> None:
    """What `commit_unit` publishes for a one-row unit, written without tmp+fsync (a benchmark's
    shortcut: 10^5 fsyncs would take longer than everything measured)."""
    data = parquet_bytes(tokens_table([_row(unit)], fingerprint))
    rel = layout.tokens_rel(unit.unit_id)
    fs.pipe_file(layout.path(rel), data)
    entry = {
        "unit_id": unit.unit_id,
        "unit_info": {**unit.to_dict(), "n_items": 1},
        "files": [
            {
                "kind": "tokens",
                "path": rel,
                "rows": 1,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        ],
        "formats": ["parquet"],
        "n_items": 1,
        "n_tokens_rows": 1,
        "n_error_rows": 0,
        "n_frames": 3,
        "audio_seconds": 0.05,
        "dataset_version": layout.version,
        "fingerprint_digest": fingerprint_digest(fingerprint),
        "committed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run_id": "bench",
        "attempt_id": "bench-" + hashlib.sha256(unit.unit_id.encode()).hexdigest()[:32],
    }
    fs.pipe_file(layout.manifest_path(unit.unit_id), json_bytes(entry))


def build_committed(
    workdir: Path,
    units: int,
    *,
    real: bool = False,
    synth: bool = False,
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
    names = [f"{in_path.rstrip('/')}/clip{i:06d}.wav" for i in range(units)]
    wav = _wav(0)  # the plan reads names and stamps only; a rerun reads no audio
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda name: in_fs.pipe_file(name, wav), names))
    config = TokenizeConfig(
        input=src,
        output=out,
        input_kind="files",
        files_per_unit=1,
        storage_options=options,
        progress_interval_s=60,
        **TINY,
    )
    if real:
        run_tokenize(config, stream=io.StringIO())
        return config
    fingerprint = job_fingerprint(config)
    fs, _ = open_filesystem(out, options)
    layout = OutputLayout.for_fingerprint(out, fingerprint)
    planned = plan_units(src, storage_options=options, files_per_unit=1, kind="files")
    if synth:
        fs.makedirs(layout.tokens_dir, exist_ok=True)
        fs.makedirs(layout.manifest_dir, exist_ok=True)

    def commit(unit: InputUnit) -> None:
        if synth:
            _synth_unit(fs, layout, fingerprint, unit)
            return
        commit_unit(
            fs,
            layout,
            unit.unit_id,
            token_rows=[_row(unit)],
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


def _measure(config: TokenizeConfig, label: str, repeat: int, check: bool) -> None:
    fs, _ = open_filesystem(config.output, config.storage_options)
    layout = OutputLayout.for_fingerprint(config.output, job_fingerprint(config))
    started = time.perf_counter()
    found = read_manifest_report(fs, layout)
    read_s = time.perf_counter() - started
    print(
        f"[{label}] manifest read: {read_s:.2f} s ({len(found.entries)} units; index "
        f"{found.index or '-'}; {len(found.loose)} entry files, {len(found.loose) - len(found.covered)} read)"
    )
    for attempt in range(repeat):
        summary, wall = time_rerun(config)
        print(
            f"[{label}] rerun {attempt + 1}: {wall:.2f} s wall, units to do {summary.units_planned}, "
            f"skipped {summary.units_skipped}, items encoded {summary.items}"
        )
    if check:
        started = time.perf_counter()
        report = verify(config.output, storage_options=config.storage_options)
        print(
            f"[{label}] verify: {time.perf_counter() - started:.2f} s, "
            f"{'OK' if report.ok else f'{report.problems} problem(s)'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--real", action="store_true", help="make the finished state with the real job")
    parser.add_argument("--synth", action="store_true", help="write token files and entries directly")
    parser.add_argument("--s3", action="store_true", help="input and output on a local SeaweedFS")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-verify", action="store_true", help="skip the verify timings")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir, server, kwargs = Path(tmp), None, {}
        if args.s3:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the server helper
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
            config = build_committed(workdir, args.units, real=args.real, synth=args.synth, **kwargs)
            how = "real job" if args.real else "direct writes" if args.synth else "commit_unit"
            print(
                f"finished state: {args.units} units ({how}) in {time.perf_counter() - started:.1f} s "
                f"on {'s3' if args.s3 else 'local disk'}"
            )
            job.COMPACT_MIN_LOOSE, threshold = 10**12, job.COMPACT_MIN_LOOSE  # no end-of-run fold yet
            _measure(config, "entry files", args.repeat, not args.no_verify)
            job.COMPACT_MIN_LOOSE = threshold
            started = time.perf_counter()
            for result in compact_output(config.output, storage_options=config.storage_options):
                print(f"compact: {result.line()}")
            print(f"compact: {time.perf_counter() - started:.2f} s (both passes)")
            _measure(config, "compacted", args.repeat, not args.no_verify)
        finally:
            if server is not None:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
