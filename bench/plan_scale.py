"""Planning time and driver peak memory for a large input: the whole-listing planner vs streaming.

Writes N empty `.wav` files (planning reads names and stamps only) in folders of `--per-folder`,
then plans them in a fresh process per mode, so each peak RSS is its own:
- `eager`: `plan_units` (today's whole listing: one `find`, sorted, then all units in a list);
- `stream`: `iter_units` consumed as a run consumes it (units dropped once taken), with the time
  to the first unit — when encoding could start;
- `plan`: `PlanStream` against an empty output, as `run_tokenize` iterates it;
- `rerun`: `PlanStream` against an output whose compacted manifest has committed every listed file
  (one index, 100-file units by default): a no-op rerun's planning, which must hold what is
  committed while it lists (`CommittedFiles`).
Prints figures only.

    python bench/plan_scale.py --objects 1000000                   # local disk, ~1 GB of inodes
    python bench/plan_scale.py --objects 20000 --s3                # a local SeaweedFS S3 server
    python bench/plan_scale.py --objects 1000000 --modes rerun --files-per-unit 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the SeaweedFS helper lives in tests/
    sys.path.insert(0, str(REPO))
MODES = ("eager", "stream", "plan")
EXTRA_MODES = ("rerun",)
TINY = {"codec_size": "tiny", "weights": "random:0", "token_rate": 50, "semantic_vocab_size": 16384}


def committed_layout(url: str, options: dict) -> Any:
    """The output version `rerun` plans against (next to the input, under `<input>-out`)."""
    from pipeline.config import TokenizeConfig
    from pipeline.dataset.layout import OutputLayout
    from pipeline.tokenize.fingerprint import job_fingerprint

    out = url.rstrip("/") + "-out"
    config = TokenizeConfig(input=url, output=out, input_kind="files", storage_options=options, **TINY)
    return OutputLayout.for_fingerprint(out, job_fingerprint(config))


def write_committed(url: str, options: dict, files_per_unit: int) -> None:
    """A compacted manifest (one index file) that commits every unit of the input, with the same
    entry shape `commit_unit` writes (its data files are not written: planning never reads them)."""
    import hashlib

    from pipeline.dataset.layout import fingerprint_digest
    from pipeline.dataset.manifest_index import IndexRow, encode_index, index_rel
    from pipeline.io.sources import plan_units
    from pipeline.io.storage import open_filesystem

    layout = committed_layout(url, options)
    fs, _ = open_filesystem(layout.root_url, options)
    rows = {}
    for unit in plan_units(url, storage_options=options, kind="files", files_per_unit=files_per_unit):
        rel = layout.tokens_rel(unit.unit_id)
        entry = {
            "unit_id": unit.unit_id,
            "unit_info": {**unit.to_dict(), "n_items": len(unit.uris)},
            "files": [
                {"kind": "tokens", "path": rel, "rows": len(unit.uris), "bytes": 1, "sha256": "0" * 64}
            ],
            "formats": ["parquet"],
            "n_items": len(unit.uris),
            "n_tokens_rows": len(unit.uris),
            "n_error_rows": 0,
            "dataset_version": layout.version,
            "fingerprint_digest": fingerprint_digest({}),
            "committed_at": "2026-12-01T00:00:00+00:00",
            "run_id": "bench",
            "attempt_id": "bench-" + hashlib.sha256(unit.unit_id.encode()).hexdigest()[:32],
        }
        rows[unit.unit_id] = IndexRow(entry=entry, stamp="")
    data = encode_index(rows, seq=1, base=None, run_id="bench")
    fs.makedirs(layout.path("_manifest/_index"), exist_ok=True)
    fs.pipe_file(layout.path(index_rel(1)), data)
    print(f"committed: {len(rows)} units in one index of {len(data) / 2**20:.1f} MiB")


def write_local(root: Path, objects: int, per_folder: int) -> None:
    """N empty files, `per_folder` to a folder (os calls: fsspec would take minutes for 10^6)."""
    for index in range(objects):
        folder = root / f"d{index // per_folder:05d}"
        if index % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        os.close(os.open(folder / f"clip{index:07d}.wav", os.O_CREAT | os.O_WRONLY, 0o644))


def write_s3(fs, base: str, objects: int, per_folder: int) -> None:  # noqa: ANN001 - s3fs
    names = [f"{base}/d{i // per_folder:05d}/clip{i:07d}.wav" for i in range(objects)]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda name: fs.pipe_file(name, b""), names))


def run_mode(mode: str, url: str, options: dict, files_per_unit: int) -> dict:
    """One mode, in this process: wall seconds, units, peak RSS (MiB) above the imports."""
    import gc

    from pipeline.io.sources import iter_units, plan_units
    from pipeline.tokenize.work_plan import PlanStream

    gc.collect()
    base = _status_mib("VmHWM")  # not ru_maxrss: Linux carries the parent's peak across exec
    before = _rss_mib()
    started = time.perf_counter()
    first = None
    units = 0
    if mode == "eager":
        units = len(plan_units(url, storage_options=options, kind="files", files_per_unit=files_per_unit))
    else:
        if mode == "rerun":
            from pipeline.io.storage import open_filesystem

            layout = committed_layout(url, options)
            stream = PlanStream(
                url,
                open_filesystem(layout.root_url, options)[0],
                layout,
                storage_options=options,
                kind="files",
                files_per_unit=files_per_unit,
                glob=None,
            )
        elif mode == "stream":
            stream = iter_units(url, storage_options=options, kind="files", files_per_unit=files_per_unit)
        else:
            stream = PlanStream(
                url,
                None,
                None,
                storage_options=options,
                kind="files",
                files_per_unit=files_per_unit,
                glob=None,
            )
        for _ in stream:
            if first is None:
                first = time.perf_counter() - started
            units += 1
    wall = time.perf_counter() - started
    gc.collect()
    held = _rss_mib() - before  # what the planner still holds at the listing's end (stream alive)
    peak = _status_mib("VmHWM")
    return {
        "mode": mode,
        "wall_s": wall,
        "first_unit_s": first,
        "units": units,
        "peak_mib": peak - base,
        "held_mib": held,
    }


def _rss_mib() -> float:
    return _status_mib("VmRSS")


def _status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS now, VmHWM its peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--per-folder", type=int, default=1000)
    parser.add_argument("--files-per-unit", type=int, default=256)
    parser.add_argument("--s3", action="store_true")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(run_mode(spec["mode"], spec["url"], spec["options"], spec["files_per_unit"])))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        options: dict = {}
        started = time.perf_counter()
        if args.s3:
            from tests.s3_server import SeaweedS3

            server = SeaweedS3(data_dir=Path(tmp) / "weed")
            server.start()
            bucket = server.make_bucket("bench-plan")
            options = server.storage_options
            url = f"{bucket}/in"
            write_s3(server.filesystem(), url.removeprefix("s3://"), args.objects, args.per_folder)
        else:
            url = str(Path(tmp) / "in")
            write_local(Path(url), args.objects, args.per_folder)
        if "rerun" in args.modes.split(","):
            write_committed(url, options, args.files_per_unit)
        print(
            f"input: {args.objects} objects in folders of {args.per_folder} on "
            f"{'s3' if args.s3 else 'local disk'}, written in {time.perf_counter() - started:.1f} s"
        )
        try:
            for mode in args.modes.split(","):
                spec = {"mode": mode, "url": url, "options": options, "files_per_unit": args.files_per_unit}
                done = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)],
                    cwd=REPO,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(done.stdout.strip().splitlines()[-1])
                first = "-" if r["first_unit_s"] is None else f"{r['first_unit_s']:.2f} s"
                print(
                    f"{mode:>6}: {r['wall_s']:.1f} s, {r['units']} units, first unit after {first}, "
                    f"driver peak +{r['peak_mib']:.0f} MiB, held at the end +{r['held_mib']:.0f} MiB"
                )
        finally:
            if server is not None:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
