"""Encode throughput of one codec replica: 10.24 s segments per second at batch 1 versus batched.

Prints figures, never passes or fails. Also: load time and peak memory of an encode-only replica,
and (with --dtypes) token agreement of reduced precision against float32.

    python bench/encode_throughput.py --token-rate 50 --batches 1 4 8 --segments 8
    python bench/encode_throughput.py --device cuda --batches 1 16 64 --segments 64 --dtypes bfloat16 float16
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from codec import SemantiCodec
from codec.config import SEGMENT_SAMPLES


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def synth_segments(codec: SemantiCodec, count: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    seconds = count * SEGMENT_SAMPLES / 16000 - 0.5
    t = torch.arange(int(seconds * 16000)) / 16000
    wave = 0.3 * torch.sin(2 * torch.pi * (200 + 30 * torch.sin(t)) * t) + 0.05 * torch.randn(
        len(t), generator=generator)
    segments = codec.split_segments(wave)
    return segments.samples[:count], segments.valid_frames[:count]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--token-rate", type=int, default=50)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--size", default="full")
    parser.add_argument("--weights", default="random:0")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--segments", type=int, default=8, help="segments encoded per measurement")
    parser.add_argument("--dtypes", nargs="*", default=[], help="also measure these dtypes' agreement")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    codec = SemantiCodec(args.token_rate, args.vocab, weights=args.weights, size=args.size,
                         device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - started
    rss_after_load = peak_rss_gb()
    samples, valid = synth_segments(codec, args.segments)
    results = {"device": str(codec.device), "dtype": args.dtype, "token_rate": args.token_rate,
               "size": args.size, "threads": torch.get_num_threads(), "load_s": round(load_s, 2),
               "peak_rss_gb_after_load": round(rss_after_load, 2), "runs": []}
    reference = None
    for batch in args.batches:
        codec.max_batch_segments = batch
        codec.encode_segments(samples[:batch], valid[:batch])  # warm-up
        sync(codec.device)
        started = time.perf_counter()
        tokens = codec.encode_segments(samples, valid)
        sync(codec.device)
        wall = time.perf_counter() - started
        reference = tokens if reference is None else reference
        run = {"batch": batch, "segments": args.segments, "wall_s": round(wall, 3),
               "segments_per_s": round(args.segments / wall, 3),
               "x_real_time": round(args.segments * 10.24 / wall, 2),
               "identical_to_first": bool(torch.equal(tokens, reference))}
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    results["peak_rss_gb"] = round(peak_rss_gb(), 2)
    if codec.device.type == "cuda":
        results["cuda_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    for dtype in args.dtypes:
        low = SemantiCodec(args.token_rate, args.vocab, weights=args.weights, size=args.size,
                           device=args.device, dtype=dtype, max_batch_segments=max(args.batches))
        other = low.encode_segments(samples, valid)
        results[f"agreement_{dtype}"] = {
            "semantic": round(float((other[..., 0] == reference[..., 0]).float().mean()), 4),
            "acoustic": round(float((other[..., 1] == reference[..., 1]).float().mean()), 4)}
        del low
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
