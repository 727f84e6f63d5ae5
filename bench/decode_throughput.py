"""Decode throughput: seconds per 10.24 s window at N DDIM steps, batch 1 versus batched windows.

Prints figures, never passes or fails. Per window count W it times one DDIM step (one batched
uncond+cond UNet call of 2·W rows, plus the update) and the tail (VAE + HiFi-GAN for W windows),
and reports seconds per window at --report-steps (default 50, the official count) as
(report_steps · step + tail) / W — so a short run (e.g. --steps 5) extrapolates to 50 steps. With
--end-to-end it also times a whole `decode_batch` at --steps. With several --dtypes it reports the
bf16 difference against float32 on the same noise (relative max and rms of the waveform).

    python bench/decode_throughput.py --steps 5 --windows 1 4
    python bench/decode_throughput.py --device cuda --windows 1 8 32 --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from codec import SemantiCodec
from codec.sampler import LATENT_SHAPE, NoiseSource, ddim_sample


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def window_tokens(codec: SemantiCodec, windows: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    n = codec.config.tokens_per_segment
    return [
        torch.stack(
            [
                torch.randint(0, codec.config.semantic_vocab_size, (n,), generator=generator),
                torch.randint(0, 8192, (n,), generator=generator),
            ],
            dim=-1,
        )
        for _ in range(windows)
    ]


def timed(fn, device: torch.device, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure(codec: SemantiCodec, windows: int, steps: int, repeats: int, dtype: torch.dtype) -> dict:
    decoder = codec.decoder
    decoder.compute_dtype = dtype
    device = codec.device
    tokens = window_tokens(codec, windows)
    generator = torch.Generator().manual_seed(1)
    noise = NoiseSource(
        explicit=(
            torch.randn(windows, *LATENT_SHAPE, generator=generator),
            torch.randn(windows, steps, *LATENT_SHAPE, generator=generator),
        )
    )
    schedule = decoder.schedule(steps)
    with torch.inference_mode():
        cond, uncond = decoder.conditions.build(tokens)
        x_t, step_noise = noise.draw(list(range(windows)), steps)
        latent = ddim_sample(decoder.unet, schedule, cond, uncond, x_t, step_noise)  # warm-up
        sampling = timed(
            lambda: ddim_sample(decoder.unet, schedule, cond, uncond, x_t, step_noise), device, repeats
        )
        tail = timed(lambda: decoder.mel_to_wave(decoder.latent_to_mel(latent)), device, repeats)
        wave = decoder.mel_to_wave(decoder.latent_to_mel(latent)).cpu()
    return {"windows": windows, "step_s": sampling / steps, "tail_s": tail, "wave": wave}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--token-rate", type=int, default=50)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--size", default="full")
    parser.add_argument("--weights", default="random:0")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=5, help="DDIM steps actually run")
    parser.add_argument("--report-steps", type=int, default=50, help="steps the figures are scaled to")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--end-to-end", action="store_true", help="also time decode_batch at --steps")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    codec = SemantiCodec(
        args.token_rate,
        args.vocab,
        weights=args.weights,
        size=args.size,
        device=args.device,
        components=("encoder", "decoder"),
    )
    print(
        json.dumps(
            {
                "device": str(codec.device),
                "size": args.size,
                "token_rate": args.token_rate,
                "threads": torch.get_num_threads(),
                "load_s": round(time.perf_counter() - started, 1),
                "steps_run": args.steps,
                "reported_at_steps": args.report_steps,
            }
        )
    )
    reference: dict[int, torch.Tensor] = {}
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for windows in args.windows:
            result = measure(codec, windows, args.steps, args.repeats, dtype)
            per_window = (args.report_steps * result["step_s"] + result["tail_s"]) / windows
            row = {
                "dtype": dtype_name,
                "windows_batched": windows,
                "unet_step_s": round(result["step_s"], 3),
                "vae_vocoder_s": round(result["tail_s"], 3),
                f"s_per_window_at_{args.report_steps}_steps": round(per_window, 2),
                "realtime_factor": round(10.24 / per_window, 3),
            }
            if dtype_name == "float32":
                reference[windows] = result["wave"]
            elif windows in reference:
                ref = reference[windows]
                diff = result["wave"] - ref
                row["vs_float32_rel_max"] = float(diff.abs().max() / ref.abs().max())
                row["vs_float32_rel_rms"] = float(diff.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())
            print(json.dumps(row))
    if args.end_to_end:
        tokens = torch.cat(window_tokens(codec, 1))[None]
        start = time.perf_counter()
        codec.decode_batch(tokens, steps=args.steps, seed=0)
        print(
            json.dumps(
                {"end_to_end_one_window_s": round(time.perf_counter() - start, 2), "steps": args.steps}
            )
        )


if __name__ == "__main__":
    main()
