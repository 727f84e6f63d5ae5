"""The driver's cost at scale: N tiny items through a multi-node Ray cluster on this machine.

Starts a `ray.cluster_utils.Cluster` of `--nodes` nodes (`--cpus-per-node` logical CPUs each; on
one machine they share its cores), writes N tiny synthetic WAV items (50 ms each, in folders of
1,000), and runs the tokenize job on them with the tiny codec and random weights. While it runs,
a thread of the driver process samples the driver's RSS and CPU time (`getrusage`, all its threads:
planning, Ray Data's executor, routing block references to the committers, counting their
reports) and counts committed units (entry files). Assembly and commits run in the committer
actors (pipeline/tokenize/commit_stage.py), not in the driver.

Reports items/s, driver CPU seconds per item (and items per driver-CPU second: how many items one
driver core absorbs), and the driver's RSS when 10 %, 50 % and 100 % of the units were committed
(flat RSS = the driver's memory does not grow with the corpus). Prints figures only.

    python bench/cluster_scale.py --items 20000
    python bench/cluster_scale.py --items 100000 --files-per-unit 256 --json /tmp/cluster.json

Items/s here is bounded by the machine's cores (every node, encoder and reader shares them); the
driver figures are what carries over to a real cluster.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

TINY = {"codec_size": "tiny", "weights": "random:0", "token_rate": 50, "semantic_vocab_size": 16384}


def write_items(folder: Path, items: int, per_folder: int = 1000) -> None:
    """`items` 50 ms WAVs, `per_folder` to a folder; each folder's noise differs (what the audio
    sounds like does not matter to a cost benchmark)."""
    import soundfile as sf

    def one_folder(index: int) -> None:
        buf = io.BytesIO()
        samples = np.random.default_rng(index).uniform(-0.3, 0.3, 800).astype(np.float32)
        sf.write(buf, samples, 16000, format="WAV", subtype="PCM_16")
        data = buf.getvalue()
        sub = folder / f"d{index:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        for item in range(index * per_folder, min(items, (index + 1) * per_folder)):
            (sub / f"clip{item:07d}.wav").write_bytes(data)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one_folder, range(-(-items // per_folder))))


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Sampler(threading.Thread):
    """(seconds, committed entry files, driver RSS MB, driver CPU s) every `interval` seconds."""

    def __init__(self, manifest_dir: Path, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.manifest_dir, self.interval = manifest_dir, interval
        self.samples: list[tuple[float, int, float, float]] = []
        self.stop = threading.Event()
        self.started = time.perf_counter()

    def committed(self) -> int:
        try:
            return sum(1 for e in os.scandir(self.manifest_dir) if e.name.endswith(".json"))
        except FileNotFoundError:
            return 0

    def run_once(self) -> None:
        self.samples.append((time.perf_counter() - self.started, self.committed(), rss_mb(), cpu_s()))

    def run(self) -> None:
        last_print = time.perf_counter()
        while not self.stop.wait(self.interval):
            self.run_once()
            if time.perf_counter() - last_print >= 300:  # partial figures survive a stopped run
                last_print = time.perf_counter()
                t, committed, rss, cpu = self.samples[-1]
                print(
                    f"[bench] {t:.0f} s: {committed} units committed, driver RSS {rss:.0f} MiB, "
                    f"driver CPU {cpu:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--files-per-unit", type=int, default=256)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--cpus-per-node", type=float, default=2)
    parser.add_argument("--num-encoders", type=int, default=2)
    parser.add_argument("--cpus-per-encoder", type=float, default=1)
    parser.add_argument("--committers", type=int, help="committer actors (default: the job's, 1 here)")
    parser.add_argument("--workdir", help="keep the corpus and output here (default: a temp folder)")
    parser.add_argument("--json", help="append the figures to this JSONL file")
    args = parser.parse_args(argv)

    import ray
    from ray.cluster_utils import Cluster

    from pipeline.config import TokenizeConfig
    from pipeline.dataset.layout import OutputLayout
    from pipeline.tokenize.fingerprint import job_fingerprint
    from pipeline.tokenize.job import run_tokenize

    work = Path(args.workdir or tempfile.mkdtemp(prefix="semtok-cluster-"))
    src, out = work / "in", work / "out"
    started = time.perf_counter()
    if not src.exists():
        write_items(src, args.items)
    print(f"corpus: {args.items} items of 50 ms in {time.perf_counter() - started:.1f} s", flush=True)

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": args.cpus_per_node, "include_dashboard": False},
    )
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=args.cpus_per_node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    print(f"cluster: {len(ray.nodes())} nodes, {ray.cluster_resources().get('CPU')} CPUs", flush=True)
    try:
        config = TokenizeConfig(
            input=str(src),
            output=str(out),
            input_kind="files",
            files_per_unit=args.files_per_unit,
            num_encoders=args.num_encoders,
            cpus_per_encoder=args.cpus_per_encoder,
            committers=args.committers,
            progress_interval_s=30,
            **TINY,
        )
        layout = OutputLayout.for_fingerprint(str(out), job_fingerprint(config))
        sampler = Sampler(Path(layout.manifest_dir))
        cpu0, rss0 = cpu_s(), rss_mb()
        sampler.start()
        t0 = time.perf_counter()
        summary = run_tokenize(config, stream=sys.stderr)
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        sampler.run_once()  # the last commits may land after the last sample
        cpu = cpu_s() - cpu0
    finally:
        ray.shutdown()
        cluster.shutdown()

    units = summary.units_committed
    at: dict[str, Any] = {}
    for share in (0.1, 0.5, 1.0):
        hit = next((s for s in sampler.samples if s[1] >= share * units), None)
        if hit is not None:
            at[f"{int(share * 100)}%"] = {
                "t_s": round(hit[0], 1),
                "rss_mb": round(hit[2], 1),
                "cpu_s": round(hit[3] - cpu0, 1),
            }
    peak = max((s[2] for s in sampler.samples), default=rss_mb())
    # Per item once running (10 % → 100 % committed): without Ray start-up and planning.
    marginal = None
    if "10%" in at and "100%" in at and units:
        first = next(s for s in sampler.samples if s[1] >= 0.1 * units)
        share = (sampler.samples[-1][1] - first[1]) / units
        if share > 0:
            marginal = round(1000 * (sampler.samples[-1][3] - first[3]) / (share * summary.items), 3)
    figures = {
        "items": summary.items,
        "items_ok": summary.items_ok,
        "units": units,
        "files_per_unit": args.files_per_unit,
        "nodes": args.nodes,
        "cpus_per_node": args.cpus_per_node,
        "num_encoders": args.num_encoders,
        "wall_s": round(wall, 1),
        "items_per_s": round(summary.items / wall, 1),
        "driver_cpu_s": round(cpu, 1),
        "driver_cpu_ms_per_item": round(1000 * cpu / max(summary.items, 1), 3),
        "items_per_driver_cpu_s": round(summary.items / cpu, 1) if cpu else None,
        "driver_cpu_ms_per_item_10_to_100pct": marginal,
        "driver_rss_mb_before": round(rss0, 1),
        "driver_rss_mb_at_committed": at,
        "driver_rss_mb_peak": round(peak, 1),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "a") as sink:
            sink.write(json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
