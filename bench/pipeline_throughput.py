"""End-to-end pipeline throughput against the bare batched codec loop and a per-file loop.

All three encode the same decoded audio with the same codec config; figures are audio seconds per
wall second. Prints figures, never passes or fails.

    python bench/pipeline_throughput.py throughput --files 6 --seconds 20 --size full
    python bench/pipeline_throughput.py memory --files 40 --scale 10     # tiny codec, peak RSS
    python bench/pipeline_throughput.py driver --units 200 --items-per-unit 100   # no Ray, no codec
    python bench/pipeline_throughput.py route --units 200 --items-per-unit 100 --committers 2

`driver` measures one committer's work (pipeline/tokenize/commit_stage.py: `UnitAssembler` +
`commit_finished` on `commit_threads` threads, what a `UnitCommitter` does per block) on synthesized
encoder output batches, with no Ray and no codec: items, units and segments per second, and per
second of CPU (all threads), which is how many of them one committer core absorbs.

`memory` runs the pipeline on N and scale×N files, each in a fresh process with a fresh local Ray,
and reports the peak private memory (RssAnon) of the driver and of every Ray worker process, and
their peak shared object-store pages (RssShmem), sampled from Linux /proc every 0.25 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from codec import build_codec
from pipeline.config import TokenizeConfig
from pipeline.io.audio_decoding import decode_audio


def write_corpus(folder: Path, files: int, seconds: float, seed: int = 0) -> list[Path]:
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(files):
        t = np.arange(int(seconds * 16000)) / 16000
        f0 = 120 + 40 * index % 200
        wave = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t)))
        wave += 0.03 * rng.standard_normal(len(t))
        path = folder / f"clip_{index:05d}.wav"
        soundfile.write(path, wave.astype(np.float32), 16000, subtype="PCM_16")
        paths.append(path)
    return paths


def config_for(args, input_dir: Path, output: Path) -> TokenizeConfig:
    return TokenizeConfig(
        input=str(input_dir),
        output=str(output),
        weights=args.weights,
        token_rate=args.token_rate,
        semantic_vocab_size=args.vocab,
        codec_size=args.size,
        encode_batch_segments=args.batch,
        progress_interval_s=3600,
        files_per_unit=args.files_per_unit,
    )


def throughput(args) -> None:
    import ray

    from pipeline.runtime.ray_setup import init_ray
    from pipeline.tokenize.job import run_tokenize

    work = Path(tempfile.mkdtemp(prefix="semtok-bench-"))
    paths = write_corpus(work / "in", args.files, args.seconds)
    config = config_for(args, work / "in", work / "out")
    waves = [torch.from_numpy(decode_audio(p.read_bytes()).samples) for p in paths]
    audio_s = sum(len(w) for w in waves) / 16000

    started = time.perf_counter()
    codec = build_codec(config.codec_spec(), device="cpu")
    load_s = time.perf_counter() - started
    segments = [codec.split_segments(w) for w in waves]
    samples = torch.cat([s.samples for s in segments])
    valid = torch.cat([s.valid_frames for s in segments])

    codec.max_batch_segments = args.batch
    started = time.perf_counter()
    codec.encode_segments(samples, valid)
    batched_s = time.perf_counter() - started

    codec.max_batch_segments = 1
    started = time.perf_counter()
    for wave in waves:  # the official way: one file, one segment at a time
        codec.encode(wave)
    per_file_s = time.perf_counter() - started
    del codec

    init_ray(None)
    summary = run_tokenize(config, stream=open(os.devnull, "w"))
    ray.shutdown()
    result = {
        "files": args.files,
        "seconds_per_file": args.seconds,
        "audio_s": round(audio_s, 1),
        "segments": int(samples.shape[0]),
        "size": args.size,
        "token_rate": args.token_rate,
        "batch": args.batch,
        "torch_threads": torch.get_num_threads(),
        "replica_load_s": round(load_s, 2),
        "bare_batched_loop": {"wall_s": round(batched_s, 2), "x_real_time": round(audio_s / batched_s, 3)},
        "per_file_loop": {"wall_s": round(per_file_s, 2), "x_real_time": round(audio_s / per_file_s, 3)},
        "pipeline": {
            "wall_s": round(summary.wall_seconds, 2),
            "x_real_time": round(summary.real_time_factor, 3),
            "wall_minus_replica_load_s": round(summary.wall_seconds - load_s, 2),
        },
    }
    result["pipeline_vs_bare"] = round(batched_s / summary.wall_seconds, 3)
    result["pipeline_vs_bare_excluding_replica_load"] = round(batched_s / (summary.wall_seconds - load_s), 3)
    result["pipeline_vs_per_file"] = round(per_file_s / summary.wall_seconds, 3)
    print(json.dumps(result, indent=1))


def _memory_mb(pid: int) -> dict[str, float]:
    """Current private (RssAnon) and shared (RssShmem: Ray's object store pages) resident memory.

    VmHWM alone misleads here: it counts every object-store page a worker ever touched, which
    grows with run length although plasma reuses those pages and caps them at its budget.
    """
    out = {"private": 0.0, "shared": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                out["private"] = int(line.split()[1]) / 1024
            elif line.startswith("RssShmem:"):
                out["shared"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def _ray_workers() -> dict[int, str]:
    """pid → Ray's process title (ray::<task or actor>) of every Ray worker process."""
    workers = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::"):
                workers[int(entry.name)] = cmdline.split(b"\0")[0].decode(errors="replace")[:60]
    return workers


def memory_child(args) -> None:
    import threading

    import ray

    from pipeline.runtime.ray_setup import init_ray
    from pipeline.tokenize.job import run_tokenize

    work = Path(tempfile.mkdtemp(prefix="semtok-mem-"))
    write_corpus(work / "in", args.files, args.seconds)
    init_ray(None)
    peaks: dict[str, dict[str, float]] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid, title in [(os.getpid(), "driver"), *_ray_workers().items()]:
                title = title.split(".")[0]  # one row per actor/task kind, not per method
                current = _memory_mb(pid)
                peak = peaks.setdefault(title, {"private": 0.0, "shared": 0.0})
                for kind, value in current.items():
                    peak[kind] = max(peak[kind], value)
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    summary = run_tokenize(config_for(args, work / "in", work / "out"), stream=open(os.devnull, "w"))
    stop.set()
    sampler.join()
    workers = {t: p for t, p in peaks.items() if t != "driver"}
    print(
        json.dumps(
            {
                "files": args.files,
                "items": summary.items,
                "audio_h": round(summary.audio_hours, 3),
                "driver_peak_private_mb": round(peaks["driver"]["private"], 1),
                "worker_peak_private_mb": round(max(p["private"] for p in workers.values()), 1),
                "worker_peak_shared_mb": round(max(p["shared"] for p in workers.values()), 1),
                "peaks_mb": {t: {k: round(v, 1) for k, v in p.items()} for t, p in peaks.items()},
                "wall_s": round(summary.wall_seconds, 1),
            }
        )
    )
    ray.shutdown()


def memory(args) -> None:
    rows = []
    for files in (args.files, args.files * args.scale):
        command = [
            sys.executable,
            __file__,
            "memory-child",
            "--files",
            str(files),
            "--seconds",
            str(args.seconds),
            "--size",
            args.size,
            "--weights",
            args.weights,
            "--token-rate",
            str(args.token_rate),
            "--vocab",
            str(args.vocab),
            "--batch",
            str(args.batch),
            "--files-per-unit",
            str(args.files_per_unit),
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)


def _encoded_batches(args) -> list[dict[str, np.ndarray]]:
    """What `iter_batches` hands the driver: encoder output rows (prepare rows minus samples, plus
    tokens), `--batch` segments per batch, each unit's rows in a run, closed by its `unit` row."""
    from pipeline.records import InputUnit
    from pipeline.tokenize.prepare_stage import SEGMENT, UNIT, empty_row

    frames_per_segment = 256  # 10.24 s at 25 frames/s
    segments_per_item = max(1, math.ceil(args.seconds / 10.24))
    frames = int(args.seconds * 25)
    tokens = np.arange(frames_per_segment * 2, dtype=np.uint16).tobytes()
    rows = []
    for u in range(args.units):
        unit_id = f"files-{u:016x}"
        uris = [f"s3://corpus/d{u:05d}/clip{i:04d}.wav" for i in range(args.items_per_unit)]
        stamps = ("size:1;etag:x",) * len(uris)
        unit = InputUnit(unit_id, "files", tuple(uris), root="s3://corpus", stamps=stamps)
        for i, uri in enumerate(uris):
            for seg in range(segments_per_item):
                row = empty_row()
                row.update(
                    row_kind=SEGMENT,
                    unit_id=unit_id,
                    item_index=i,
                    item_id=uri.split("corpus/", 1)[1],
                    source_uri=uri,
                    metadata=json.dumps({"speaker": i % 7}) if seg == 0 else "",
                    seg_index=seg,
                    n_segments=segments_per_item,
                    num_tokens=frames,
                    duration_s=args.seconds,
                    tokens=tokens,
                )
                del row["samples"]
                rows.append(row)
        closing = empty_row()
        closing.update(row_kind=UNIT, unit_id=unit_id, n_items=len(uris), unit=unit.to_json())
        del closing["samples"]
        rows.append(closing)
    batches = []
    for start in range(0, len(rows), args.batch):
        chunk = rows[start : start + args.batch]
        batches.append({k: np.array([r[k] for r in chunk], dtype=object) for k in chunk[0]})
    return batches


def driver(args) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.dataset.layout import OutputLayout
    from pipeline.io.storage import open_filesystem
    from pipeline.tokenize.assemble import UnitAssembler
    from pipeline.tokenize.commit_stage import commit_finished

    fingerprint = {"codec": "semanticodec", "token_rate": 50, "semantic_vocab_size": 16384, "bench": "driver"}
    batches = _encoded_batches(args)
    segments = sum(len(b["row_kind"]) for b in batches) - args.units
    items = args.units * args.items_per_unit
    formats = tuple(args.formats.split(","))
    server, options, work = None, {}, Path(tempfile.mkdtemp(prefix="semtok-driver-"))
    out = str(work / "out")
    if args.s3:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the server helper
        from tests.s3_server import SeaweedS3

        server = SeaweedS3(data_dir=work / "weed")
        server.start()
        out, options = server.make_bucket("bench-driver"), server.storage_options
    try:
        results = {}
        for phase in ("assemble", "assemble+commit"):
            fs, _ = open_filesystem(out, options)
            layout = OutputLayout.for_fingerprint(f"{out}/{phase.replace('+', '-')}", fingerprint)
            assembler = UnitAssembler()
            wall, cpu = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(max_workers=args.commit_threads) as pool:
                pending = []
                for batch in batches:
                    for finished in assembler.add(batch):
                        if phase == "assemble+commit":
                            pending.append(
                                pool.submit(
                                    commit_finished,
                                    fs,
                                    layout,
                                    finished,
                                    fingerprint=fingerprint,
                                    formats=formats,
                                    run_id="bench",
                                )
                            )
                for future in pending:
                    future.result()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert assembler.pending == 0
            results[phase] = {
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "items_per_s": round(items / wall),
                "units_per_s": round(args.units / wall, 1),
                "segments_per_s": round(segments / wall),
                "items_per_cpu_s": round(items / cpu),
                "segments_per_cpu_s": round(segments / cpu),
            }
        print(
            json.dumps(
                {
                    "units": args.units,
                    "items_per_unit": args.items_per_unit,
                    "seconds_per_item": args.seconds,
                    "segments": segments,
                    "batch": args.batch,
                    "formats": list(formats),
                    "commit_threads": args.commit_threads,
                    "store": "s3 (SeaweedFS, loopback)" if args.s3 else "local disk",
                    **results,
                },
                indent=1,
            )
        )
    finally:
        if server is not None:
            server.stop()


def route(args) -> None:
    """The driver's work per block now that committers assemble and commit: the synthesized
    encoder output goes into the object store as Arrow blocks (what the encode stage leaves
    there), and the driver hands each block reference to `--committers` real `UnitCommitter`
    actors through `CommitterPool`, as `execute_units` does. Driver CPU (this process, all
    threads) per item is the driver's ceiling; committer CPU is not in it."""
    import pyarrow as pa
    import ray

    from pipeline.dataset.layout import OutputLayout
    from pipeline.tokenize.commit_stage import CommitterPool, UnitCommitter

    fingerprint = {"codec": "semanticodec", "token_rate": 50, "semantic_vocab_size": 16384, "bench": "route"}
    batches = _encoded_batches(args)
    items = args.units * args.items_per_unit
    work = Path(tempfile.mkdtemp(prefix="semtok-route-"))
    layout = OutputLayout.for_fingerprint(str(work / "out"), fingerprint)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        refs = [ray.put(pa.table({k: list(v) for k, v in batch.items()})) for batch in batches]
        actor = ray.remote(UnitCommitter).options(num_cpus=0)

        def make(index: int):
            return actor.remote(
                index,
                args.committers,
                output=layout.root_url,
                storage_options={},
                version=layout.version,
                fingerprint=fingerprint,
                formats=tuple(args.formats.split(",")),
                run_id="bench",
                threads=args.commit_threads,
            )

        pool = CommitterPool(args.committers, make)
        pool.begin_round()
        wall, cpu = time.perf_counter(), time.process_time()
        reports = []
        for start in range(0, len(refs), args.blocks_per_call):
            reports += pool.send(refs[start : start + args.blocks_per_call])
        done, unfinished = pool.finish_round()
        reports += done
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        pool.close()
    finally:
        ray.shutdown()
    assert len(reports) == args.units and not unfinished and not any(r.error for r in reports)
    print(
        json.dumps(
            {
                "units": args.units,
                "items_per_unit": args.items_per_unit,
                "blocks": len(refs),
                "batch": args.batch,
                "committers": args.committers,
                "blocks_per_call": args.blocks_per_call,
                "wall_s": round(wall, 2),
                "items_per_s": round(items / wall),
                "driver_cpu_s": round(cpu, 2),
                "driver_items_per_cpu_s": round(items / cpu),
                "driver_ms_per_block": round(1000 * cpu / len(refs), 3),
            },
            indent=1,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["throughput", "memory", "memory-child", "driver", "route"])
    parser.add_argument("--committers", type=int, default=1, help="route: committer actors")
    parser.add_argument("--blocks-per-call", type=int, default=16, help="route: blocks per committer call")
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--size", default=None)
    parser.add_argument("--weights", default="random:0")
    parser.add_argument("--token-rate", type=int, default=50)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--files-per-unit", type=int, default=16)
    parser.add_argument("--units", type=int, default=200, help="driver: units")
    parser.add_argument("--items-per-unit", type=int, default=100, help="driver: items per unit")
    parser.add_argument("--formats", default="parquet", help="driver: e.g. parquet,webdataset")
    parser.add_argument("--commit-threads", type=int, default=8, help="driver: commit threads")
    parser.add_argument("--s3", action="store_true", help="driver: commit to a local SeaweedFS")
    args = parser.parse_args()
    args.size = args.size or ("full" if args.mode == "throughput" else "tiny")
    modes = {"throughput": throughput, "memory": memory, "memory-child": memory_child}
    modes.update(driver=driver, route=route)
    modes[args.mode](args)


if __name__ == "__main__":
    main()
