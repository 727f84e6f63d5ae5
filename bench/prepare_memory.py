"""Peak memory of the prepare stage on hour-long files, streamed vs whole; and of one decode_audio call.

    python bench/prepare_memory.py prepare --hours 1 3 --paths streamed whole --format flac
    python bench/prepare_memory.py prepare --hours 1 3 --paths streamed --no-spool   # reader reads whole
    python bench/prepare_memory.py prepare --hours 1 3 --paths streamed --store s3   # from SeaweedFS
    python bench/prepare_memory.py decode --seconds 600 --rate 44100 --channels 2

`prepare`: synthesizes each file once (44.1 kHz stereo by default, under --workdir on local disk),
then per (hours, path) starts a fresh process that plays a Ray prepare worker: it runs `PrepareUnit`
(tiny codec; the real reader, the isolated decode process, the segmenter) over a one-file unit and
drops each row as it comes, as Ray Data's block builder would pass it on. This driver samples the
worker's and its decode process's /proc status every 20 ms: peak RSS (the kernel's VmHWM) and peak
anonymous memory (sampled RssAnon, what cannot be reclaimed; RSS also counts the spill file's pages
while they are mapped). "streamed" is the default job config (items of 10 min or more go through a
spill file); "whole" is streaming off and no decode budget (every decoded item in memory). Flat
memory is the same streamed peak at 1 h and 3 h. The reader (pipeline/io/sources.py) is the real
one, from storage (the local disk) to the decode process: by default it copies an item of
spool_min_bytes (64 MiB) or more to a local file in 8 MiB chunks and the decode process maps that
file (pipeline/io/spool.py), so no process holds the encoded bytes; `--no-spool` reads each item
whole into the worker, as before spooling (the file's size is reported as `item`). `--store s3`
uploads the files to a local SeaweedFS S3 server (tests/s3_server.py) and reads them from there.

`decode`: one decode_audio call per resampler in a fresh process, peak RSS growth over the decoded
float32 size: the working-memory multiple of the in-memory path, to plan max_decoded_bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]

_WORKER = """
import json, sys, time
from pipeline.config import TokenizeConfig
from pipeline.records import InputUnit
from pipeline.tokenize.prepare_stage import PrepareUnit
cfg = json.loads(sys.argv[1])
spec = TokenizeConfig(input="x", output="y", codec_size="tiny", weights="random:0").codec_spec()
streamed = cfg["path"] == "streamed"
prepare = PrepareUnit(
    spec,
    item_timeout_s=7200.0,
    max_decode_memory_bytes=None,
    stream_min_seconds=600.0 if streamed else None,
    decode_options={"max_decoded_bytes": None if not streamed else 2 * 2**30},
    spill_dir=cfg["spill_dir"],
    spool_min_bytes=cfg["spool_min_bytes"],
    storage_options=cfg["storage_options"],
)
decoder = prepare.decoder()
decoder.start()
for _ in prepare({"unit": InputUnit("w", "files", (cfg["warm"],), root=cfg["root"]).to_json()}):
    pass  # imports, caches: the baseline is a worker that has done an item
print(json.dumps({"child": decoder.pid}), flush=True)
sys.stdin.readline()  # the driver has its baselines
unit = InputUnit("u0", "files", (cfg["file"],), root=cfg["root"])
started = time.perf_counter()
rows = errors = 0
for row in prepare({"unit": unit.to_json()}):
    rows += 1
    errors += row["row_kind"] == "error"
    del row
wall = time.perf_counter() - started
child_hwm = 0
for line in open(f"/proc/{decoder.pid}/status"):
    if line.startswith("VmHWM:"):
        child_hwm = int(line.split()[1]) * 1024
print(json.dumps({"segments": prepare.stats.segments, "streamed": prepare.stats.streamed,
                  "spooled": prepare.stats.spooled, "errors": errors, "wall_s": wall,
                  "child_hwm": child_hwm}), flush=True)
"""


def _status(pid: int) -> dict[str, int]:
    """VmRSS / RssAnon / RssFile / VmHWM of a process, in bytes ({} once it is gone)."""
    found = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                    found[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return found


class _Sampler(threading.Thread):
    """Peaks of each watched process's memory, polled every `interval` seconds."""

    def __init__(self, pids: dict[str, int], interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.peaks = {name: {"RssAnon": 0, "VmRSS": 0, "RssFile": 0, "VmHWM": 0} for name in pids}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for name, pid in self.pids.items():
                for key, value in _status(pid).items():
                    self.peaks[name][key] = max(self.peaks[name][key], value)
            time.sleep(self.interval)


def synthesize(path: Path, seconds: float, rate: int, channels: int, fmt: str) -> None:
    """A voiced-buzz-plus-noise signal (compresses like speech, not like white noise), 10 s blocks."""
    block = rate * 10
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(path.suffix + ".part")
    subtype = "PCM_16"
    with sf.SoundFile(tmp, "w", rate, channels, format=fmt.upper(), subtype=subtype) as f:
        done = 0
        total = int(seconds * rate)
        while done < total:
            n = min(block, total - done)
            t = (done + np.arange(n)) / rate
            voiced = sum(np.sin(2 * np.pi * 140.0 * k * t) / k for k in range(1, 8))
            env = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
            cols = [0.2 * voiced * env + 0.01 * rng.standard_normal(n) for _ in range(channels)]
            f.write(np.stack(cols, axis=1).astype(np.float32))
            done += n
    tmp.rename(path)


class _Store:
    """Where the worker reads the files from: the local folder, or a SeaweedFS S3 bucket."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind, self.server, self.bucket = kind, None, ""
        self.options: dict | None = None
        if kind == "s3":
            sys.path.insert(0, str(REPO))
            from tests.s3_server import SeaweedS3

            self.server = SeaweedS3(data_dir=Path(tempfile.mkdtemp(prefix="seaweedfs-", dir=workdir)))
            self.server.start()
            self.bucket = self.server.make_bucket("bench-memory")
            self.options = self.server.storage_options

    def uri(self, file: Path) -> tuple[str, str]:
        """(the file's URI, the input root), uploading it first for S3."""
        if self.server is None:
            return str(file), str(file.parent)
        target = f"{self.bucket}/{file.name}"
        fs = self.server.filesystem()
        if not fs.exists(target):
            fs.put_file(str(file), target)
        return target, self.bucket

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            shutil.rmtree(self.server.data_dir, ignore_errors=True)


def run_prepare(
    file: Path, path_kind: str, spill_dir: Path, spool_min_bytes: int | None, store: _Store
) -> dict:
    warm = file.parent / "warm.wav"
    if not warm.exists():
        synthesize(warm, 2.0, 44100, 2, "wav")
    uri, root = store.uri(file)
    config = {
        "file": uri,
        "warm": store.uri(warm)[0],
        "root": root,
        "path": path_kind,
        "spill_dir": str(spill_dir),
        "spool_min_bytes": spool_min_bytes,
        "storage_options": store.options,
    }
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert worker.stdout is not None and worker.stdin is not None
    child = json.loads(worker.stdout.readline())["child"]
    base = {"worker": _status(worker.pid), "decoder": _status(child)}
    sampler = _Sampler({"worker": worker.pid, "decoder": child})
    sampler.start()
    worker.stdin.write("\n")
    worker.stdin.flush()
    result = json.loads(worker.stdout.readline())
    sampler.stop.set()
    sampler.join()
    worker.stdin.close()
    worker.wait(timeout=60)
    peaks = sampler.peaks
    peaks["worker"]["VmHWM"] = max(peaks["worker"]["VmHWM"], _status(worker.pid).get("VmHWM", 0))
    peaks["decoder"]["VmHWM"] = max(peaks["decoder"]["VmHWM"], result["child_hwm"])
    return {"base": base, "peaks": peaks, **result}


def prepare_main(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spill = workdir / "spill"
    print(
        "peaks over the whole item; growth = peak anonymous - idle anonymous; "
        "item = the encoded file's size"
        + (" (read whole into the worker: --no-spool)" if args.no_spool else " (spooled: in no process)")
    )
    head = f"{'file':>22} {'path':>8} |"
    columns = "worker: RSS peak  anon idle/peak (growth)  item | decoder: RSS peak  anon idle/peak"
    print(f"{head} {columns}  | segments wall")
    store = _Store(args.store, workdir)
    try:
        _prepare_runs(args, workdir, spill, store)
    finally:
        store.close()
    leftover = list(spill.iterdir()) if spill.exists() else []
    print(f"spill/spool files left: {len(leftover)}")


def _prepare_runs(args: argparse.Namespace, workdir: Path, spill: Path, store: _Store) -> None:
    mib = 2**20
    for hours in args.hours:
        file = workdir / f"{hours:g}h-{args.rate}-{args.channels}ch.{args.format}"
        if not file.exists():
            started = time.perf_counter()
            synthesize(file, hours * 3600, args.rate, args.channels, args.format)
            took = time.perf_counter() - started
            print(
                f"  (synthesized {file.name}: {file.stat().st_size / mib:.0f} MiB, {took:.0f} s)", flush=True
            )
        item = file.stat().st_size
        for path_kind in args.paths:
            spool_min = None if args.no_spool else int(args.spool_min_mib * 2**20)
            r = run_prepare(file, path_kind, spill, spool_min, store)
            w, d = r["peaks"]["worker"], r["peaks"]["decoder"]
            wb, db = r["base"]["worker"].get("RssAnon", 0), r["base"]["decoder"].get("RssAnon", 0)
            print(
                f"{file.name:>22} {path_kind:>8} | worker: {w['VmHWM'] / mib:>5.0f} MiB  "
                f"{wb / mib:>4.0f}/{w['RssAnon'] / mib:>5.0f} MiB ({(w['RssAnon'] - wb) / mib:>5.0f})  "
                f"{item / mib:>4.0f} | decoder: {d['VmHWM'] / mib:>5.0f} MiB  "
                f"{db / mib:>4.0f}/{d['RssAnon'] / mib:>5.0f} MiB | {r['segments']:>8} {r['wall_s']:>4.0f} s"
                + ("  spooled" if r.get("spooled") else "")
                + (f"  ERRORS {r['errors']}" if r["errors"] else ""),
                flush=True,
            )
            if args.json:
                record = {"file": file.name, "path": path_kind, "store": args.store, "item_bytes": item, **r}
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(record) + "\n")


_DECODE_CHILD = """
import json, resource, sys, time
from pipeline.io.audio_decoding import decode_audio
data = open(sys.argv[1], "rb").read()
decode_audio(data[:4096 * 4], resampler=sys.argv[2], max_decoded_bytes=None)  # imports, filter cache
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
out = decode_audio(data, resampler=sys.argv[2], max_decoded_bytes=None, max_seconds=None)
wall = time.perf_counter() - start
growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"samples": len(out.samples), "rss_growth_mib": growth / 1024, "wall_s": wall}))
"""


def decode_main(args: argparse.Namespace) -> None:
    frames = int(args.seconds * args.rate)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.wav"
        with sf.SoundFile(path, "w", args.rate, args.channels, subtype="PCM_16") as f:
            block = args.rate * 10
            for start in range(0, frames, block):
                n = min(block, frames - start)
                f.write((0.1 * rng.standard_normal((n, args.channels))).astype(np.float32))
        decoded_mib = frames * args.channels * 4 / 2**20
        print(
            f"{args.seconds:g} s x {args.rate} Hz x {args.channels} ch: {decoded_mib:.0f} MiB decoded float32"
        )
        for resampler in ("official", "soxr-hq"):
            done = subprocess.run(
                [sys.executable, "-c", _DECODE_CHILD, str(path), resampler],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"  {resampler:9s} peak RSS +{result['rss_growth_mib']:.0f} MiB "
                f"({result['rss_growth_mib'] / decoded_mib:.1f}x decoded), {result['wall_s']:.2f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="a prepare worker on hour-long files, streamed vs whole")
    prep.add_argument("--hours", type=float, nargs="+", default=[1.0, 3.0])
    prep.add_argument("--paths", nargs="+", choices=["streamed", "whole"], default=["streamed", "whole"])
    prep.add_argument("--rate", type=int, default=44100)
    prep.add_argument("--channels", type=int, default=2)
    prep.add_argument("--format", choices=["flac", "wav"], default="flac")
    prep.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "semtok-bench-memory"))
    prep.add_argument("--json", help="append one JSON line per run to this file")
    prep.add_argument("--spool-min-mib", type=float, default=64.0, help="spool items this big or bigger")
    prep.add_argument("--no-spool", action="store_true", help="read every item whole into the worker")
    prep.add_argument("--store", choices=["local", "s3"], default="local", help="read the files from here")
    dec = sub.add_parser("decode", help="one decode_audio call per resampler (in-memory path)")
    dec.add_argument("--seconds", type=float, default=300.0)
    dec.add_argument("--rate", type=int, default=44100)
    dec.add_argument("--channels", type=int, default=2)
    args = parser.parse_args()
    (prepare_main if args.command == "prepare" else decode_main)(args)


if __name__ == "__main__":
    main()
