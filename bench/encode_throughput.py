"""Encode throughput of one codec replica: seconds per 10.24 s segment at batch 1 versus batched.

Prints figures, never passes or fails. Every batch size (and every extra dtype and encoder batching
mode) is measured in the same process, interleaved round by round, and reported as the median over
--repeats rounds, so machine noise hits all variants alike. Also reports whether float32 tokens are
identical across batch sizes, and each extra dtype's token agreement with float32 (semantic %,
acoustic %).

    python bench/encode_throughput.py --token-rate 50 --batches 1 8 --segments 8
    python bench/encode_throughput.py --batches 1 2 8 --segments 8 --repeats 3 \
        --batching official batched
    python bench/encode_throughput.py --batches 1 2 8 --segments 8 --repeats 3 --dtypes bfloat16
    python bench/encode_throughput.py --weights .cache/golden-rate50-seed1 --batches 1 16 32 64 \
        --segments 64 --batch-1-segments 8 --dtypes bfloat16 --dtype-batches 1 64 --dtype-batching batched
    python bench/encode_throughput.py --device cuda --batches 1 16 64 --segments 64 --dtypes bfloat16 float16

The official code encodes one segment at a time. "official" (the default) keeps those bits in any
batch, so its float32 tokens must be identical at every batch size; "batched" runs the whole batch
through every op (its tokens may differ from batch 1's at near-ties: reported as
`float32_batched_vs_official_agreement`). See codec/encoder.py.

Batch 1 is the slow path (on the CPU its BiLSTM reads every weight once per step for one row), so
`--batch-1-segments` times it on the first N segments only; identity and agreement are then judged on
those rows of every variant.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import time

import torch

from codec import SemantiCodec
from codec.config import SEGMENT_SAMPLES
from codec.encoder import BATCHING


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def synth_segments(codec: SemantiCodec, count: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    seconds = count * SEGMENT_SAMPLES / 16000 - 0.5
    t = torch.arange(int(seconds * 16000)) / 16000
    wave = 0.3 * torch.sin(2 * torch.pi * (200 + 30 * torch.sin(t)) * t) + 0.05 * torch.randn(
        len(t), generator=generator
    )
    segments = codec.split_segments(wave)
    return segments.samples[:count], segments.valid_frames[:count]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def encode_all(encoder, features: torch.Tensor, batch: int, batching: str) -> torch.Tensor:
    """Tokens of all `features` rows, `batch` segments per encoder call."""
    encoder.batching = batching
    return torch.cat([encoder(features[start : start + batch]) for start in range(0, len(features), batch)])


def agreement(tokens: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    return {
        "semantic": round(float((tokens[..., 0] == reference[..., 0]).float().mean()), 4),
        "acoustic": round(float((tokens[..., 1] == reference[..., 1]).float().mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--token-rate", type=int, default=50)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--size", default="full")
    parser.add_argument("--weights", default="random:0")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--segments", type=int, default=8, help="segments encoded per measurement")
    parser.add_argument(
        "--batch-1-segments",
        type=int,
        default=None,
        help="time batch 1 on only the first N segments (default: --segments); tokens compared on those",
    )
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds (median reported)")
    parser.add_argument("--dtypes", nargs="*", default=[], help="also time these dtypes and their agreement")
    parser.add_argument(
        "--dtype-batches",
        type=int,
        nargs="*",
        default=None,
        help="batch sizes for --dtypes (default: the same as --batches)",
    )
    parser.add_argument(
        "--batching",
        nargs="+",
        default=["official"],
        choices=BATCHING,
        help="encoder batching modes to time in float32 (official: the official bits in any batch)",
    )
    parser.add_argument(
        "--dtype-batching",
        default=None,
        choices=BATCHING,
        help="batching mode for --dtypes (default: the first --batching; on the CPU a bfloat16 twin "
        "LSTM fails the batch-1 check, so official bfloat16 batches run one row at a time)",
    )
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    codec = SemantiCodec(
        args.token_rate, args.vocab, weights=args.weights, size=args.size, device=args.device
    )
    load_s = time.perf_counter() - started
    rss_after_load = peak_rss_gb()

    def rows_of(batch: int) -> int:
        return min(args.batch_1_segments or args.segments, args.segments) if batch == 1 else args.segments

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        rows = min(len(a), len(b))
        return bool(torch.equal(a[:rows], b[:rows]))

    def agree(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        rows = min(len(a), len(b))
        return agreement(a[:rows], b[:rows])

    samples, valid = synth_segments(codec, args.segments)
    features = codec.segment_features(samples, valid)
    encoders = {"float32": codec.encoder}
    for name in args.dtypes:
        encoders[name] = copy.deepcopy(codec.encoder)
        encoders[name].set_compute_dtype(getattr(torch, name))
    first = args.batching[0]
    plan = [("float32", batch, mode) for mode in args.batching for batch in args.batches]
    for name in args.dtypes:
        plan += [
            (name, batch, args.dtype_batching or first) for batch in (args.dtype_batches or args.batches)
        ]
    header = {
        "device": str(codec.device),
        "token_rate": args.token_rate,
        "size": args.size,
        "threads": torch.get_num_threads(),
        "segments": args.segments,
        "batch_1_segments": rows_of(1),
        "repeats": args.repeats,
        "batching": args.batching,
        "load_s": round(load_s, 2),
        "peak_rss_gb_after_load": round(rss_after_load, 2),
    }
    print(json.dumps(header), flush=True)

    # warm-up, one call per variant: a full batch on an accelerator (kernel plans); on the CPU two
    # rows are enough to create oneDNN's primitives and cost far less than a full batch
    # (and, for "official", the one-time check per batch size that batching keeps the batch-1 bits)
    for dtype, batch, mode in plan:
        encoder = encoders[dtype]
        encoder.batching = mode
        encoder(features[: batch if codec.device.type != "cpu" else min(batch, 2)])
        if mode == "official" and batch > 1:
            started = time.perf_counter()
            keeps = encoder.batch_one_lstm.matches(batch, device=codec.device, dtype=encoder.compute_dtype)
            check = {"batch": batch, "dtype": dtype, "batched_lstm_keeps_batch_1_bits": keeps}
            print(json.dumps({**check, "check_s": round(time.perf_counter() - started, 2)}), flush=True)
    seconds: dict[tuple[str, int, str], list[float]] = {key: [] for key in plan}
    tokens: dict[tuple[str, int, str], torch.Tensor] = {}
    for round_index in range(args.repeats):
        for key in plan:
            sync(codec.device)
            start = time.perf_counter()
            out = encode_all(encoders[key[0]], features[: rows_of(key[1])], key[1], key[2])
            sync(codec.device)
            seconds[key].append(time.perf_counter() - start)
            tokens.setdefault(key, out.cpu())
            if not torch.equal(tokens[key], out.cpu()):
                raise AssertionError(f"{key} gave different tokens in round {round_index}")
            print(
                json.dumps(
                    {
                        "round": round_index,
                        "dtype": key[0],
                        "batch": key[1],
                        "batching": key[2],
                        "s_per_segment": round(seconds[key][-1] / rows_of(key[1]), 3),
                    }
                ),
                flush=True,
            )

    base = statistics.median(seconds[("float32", args.batches[0], first)]) / rows_of(args.batches[0])
    reference = tokens[("float32", args.batches[0], first)]
    # dtypes are judged on every segment: against the float32 run with the most rows
    full_reference = max((tokens[key] for key in plan if key[0] == "float32" and key[2] == first), key=len)
    rows = []
    for key in plan:
        per_segment = statistics.median(seconds[key]) / rows_of(key[1])
        row = {
            "dtype": key[0],
            "batch": key[1],
            "batching": key[2],
            "segments": rows_of(key[1]),
            "s_per_segment": round(per_segment, 3),
            "segments_per_s": round(1 / per_segment, 3),
            "x_real_time": round(10.24 / per_segment, 2),
            f"speedup_vs_float32_{first}_batch_{args.batches[0]}": round(base / per_segment, 2),
            "all_rounds_s": [round(s, 2) for s in seconds[key]],
        }
        if key[0] == "float32":
            row[f"tokens_identical_to_batch_{args.batches[0]}"] = same(tokens[key], reference)
        else:
            row["agreement_vs_float32"] = agree(tokens[key], full_reference)
        rows.append(row)
    summary = {**header, "rows": rows}
    for mode in args.batching:
        runs = [tokens[("float32", b, mode)] for b in args.batches]
        longest = max(runs, key=len)  # batch 1 may have run on fewer rows: judged on those
        identical = all(same(t, longest) for t in runs)
        summary[f"float32_{mode}_tokens_identical_across_batches"] = identical
    if "official" in args.batching and "batched" in args.batching:
        official = tokens[("float32", args.batches[0], "official")]
        batched = [tokens[("float32", b, "batched")] for b in args.batches]
        summary["float32_batched_vs_official_agreement"] = [agree(t, official) for t in batched]
    summary["peak_rss_gb"] = round(peak_rss_gb(), 2)
    if codec.device.type == "cuda":
        summary["cuda_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
