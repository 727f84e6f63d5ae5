"""The whole GPU check in one run: prints ONE JSON object (also on failure), never passes or fails.

Sections, each with its own time budget and error field, all under one overall deadline (a watchdog
prints what was measured so far and exits if the deadline passes):
- `agreement`: CUDA tokens at float32 (as configured, and with TF32 off), bfloat16 and float16
  against CPU float32 tokens of the same segments (full size, random weights);
- `encoder`: segments/s, x real time and peak GPU memory at batch 1, 2, 4, … up to --max-batch
  (stops growing on OOM or when the next batch would not fit the budget), float32 then bfloat16;
- `decoder`: windows/s of a few DDIM steps, extrapolated to 50 steps (said so in the output);
- `pipeline`: `run_tokenize` with one GPU actor on a synthesized local corpus (in a child process
  with a timeout): items, audio hours, wall, x real time.

    python bench/gpu_check.py                 # ~8 min on one H200; exits at once without CUDA
    python bench/gpu_check.py --budget-s 300 --max-batch 64 --pipeline-files 8
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULT: dict = {"check": "gpu_check"}
_PRINTED = threading.Lock()
_STARTED = time.monotonic()


def emit_and_exit(code: int = 0) -> None:
    """Print RESULT once (whoever comes first: the main thread or the watchdog) and exit."""
    if _PRINTED.acquire(blocking=False):
        RESULT["total_wall_s"] = round(time.monotonic() - _STARTED, 1)
        print(json.dumps(RESULT, default=str), flush=True)
    os._exit(code)


def left(deadline: float) -> float:
    return deadline - time.monotonic()


class Section:
    """Runs one section under a budget; an exception becomes that section's "error" field."""

    def __init__(
        self, name: str, budget_s: float, overall_deadline: float, parent: dict | None = None
    ) -> None:
        self.name = name
        self.deadline = min(time.monotonic() + budget_s, overall_deadline)
        self.out: dict = (RESULT if parent is None else parent).setdefault(name, {})
        self.out["budget_s"] = round(max(0.0, self.deadline - time.monotonic()), 1)

    def __enter__(self) -> Section:
        self.started = time.monotonic()
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        self.out["wall_s"] = round(time.monotonic() - self.started, 1)
        if exc is not None:
            self.out["error"] = f"{kind.__name__}: {exc}"
            self.out["traceback_tail"] = traceback.format_exception(kind, exc, tb)[-3:]
        return True  # the next section still runs

    def left(self) -> float:
        return left(self.deadline)


def synth_wave(seconds: float, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16000)) / 16000
    wave = 0.3 * torch.sin(2 * torch.pi * (180 + 40 * seed % 7 + 30 * torch.sin(t)) * t)
    return wave + 0.05 * torch.randn(len(t), generator=generator)


def segments_of(codec, count: int, seed: int = 0):
    """`count` distinct 10.24 s segments (samples [count, 164080], valid frames [count])."""
    segments = codec.split_segments(synth_wave(count * 10.24 + 1.0, seed))
    return segments.samples[:count], segments.valid_frames[:count]


def on_cuda() -> bool:
    return RESULT.get("device") == "cuda"


def sync() -> None:
    import torch

    if on_cuda():
        torch.cuda.synchronize()


def empty_cache() -> None:
    import torch

    if on_cuda():
        torch.cuda.empty_cache()


def reset_peak() -> None:
    import torch

    if on_cuda():
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_cuda() else None


def agreement(rows, reference) -> dict:
    return {
        "semantic": round(float((rows[..., 0] == reference[..., 0]).float().mean()), 4),
        "acoustic": round(float((rows[..., 1] == reference[..., 1]).float().mean()), 4),
        "identical": bool((rows == reference).all()),
    }


def encode_with(encoder, features):
    import torch

    with torch.inference_mode():
        return encoder(features)


def section_agreement(args, codec, deadline: float) -> None:
    import torch

    from codec import SemantiCodec

    with Section("agreement", args.agreement_budget_s, deadline) as section:
        out = section.out
        samples, valid = segments_of(codec, args.agreement_segments, seed=1)
        out["segments"] = args.agreement_segments
        started = time.monotonic()
        cpu = SemantiCodec(
            args.token_rate,
            args.vocab,
            weights=args.weights,
            size=args.size,
            device="cpu",
            max_batch_segments=args.agreement_segments,
        )
        reference = cpu.encode_segments(samples, valid)
        out["cpu_reference_s"] = round(time.monotonic() - started, 1)
        out["cpu_threads"] = torch.get_num_threads()
        del cpu
        features = codec.segment_features(samples, valid)
        fp32 = encode_with(codec.encoder, features).cpu()
        out["float32"] = agreement(fp32, reference)
        out["cuda_flags"] = {
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        }
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            out["float32_no_tf32"] = agreement(encode_with(codec.encoder, features).cpu(), reference)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        batched = copy.deepcopy(codec.encoder)
        batched.batching = "batched"
        out["float32_batched"] = agreement(encode_with(batched, features).cpu(), reference)
        out["batch_invariance"] = batch_invariance(codec.encoder, features)
        batched = None
        for name in ("bfloat16", "float16"):
            if section.left() < 10:
                out[name] = {"skipped": "budget"}
                continue
            try:
                low = copy.deepcopy(codec.encoder)
                low.set_compute_dtype(getattr(torch, name))
                tokens = encode_with(low, features).cpu()
                out[name] = agreement(tokens, reference)
                out[name]["vs_cuda_float32"] = agreement(tokens, fp32)
            except Exception as exc:  # noqa: BLE001 - reported, the other dtypes still run
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                low = None
                empty_cache()


def batch_invariance(encoder, features) -> dict:
    """Whether each module gives a row the same bits in a batch as alone, on this device (float32):
    says which modules could be batched while keeping the exact tokens."""
    import torch

    checks: dict = {}
    with torch.inference_mode():
        patches = encoder.audiomae(features)
        alone = torch.cat([encoder.audiomae(features[i : i + 1]) for i in range(features.shape[0])])
        checks["audiomae"] = bool(torch.equal(patches, alone))
        rows = torch.randn(features.shape[0], 64, encoder.encoder.input_size, device=features.device)
        together = encoder.encoder(rows)[0]
        alone = torch.cat([encoder.encoder(rows[i : i + 1])[0] for i in range(rows.shape[0])])
        checks["bilstm"] = bool(torch.equal(together, alone))
        checks["bilstm_twin"] = bool(
            encoder.batch_one_lstm.matches(rows.shape[0], device=rows.device, dtype=rows.dtype)
        )
        x = torch.randn(features.shape[0], 256, encoder.encoder_output_linear.in_features, device=rows.device)
        together = encoder.encoder_output_linear(x)
        alone = torch.cat([encoder.encoder_output_linear(x[i : i + 1]) for i in range(x.shape[0])])
        checks["output_linear"] = bool(torch.equal(together, alone))
    return checks


def encoder_ladder(
    section: Section, encoder, features_of, max_batch: int, repeats: int, reference=None
) -> list[dict]:
    import torch

    rows = []
    batch, last_s = 1, 0.0
    while batch <= max_batch:
        # the next batch takes about 2× the last one (warm-up + repeats): stop before the budget ends
        if last_s and section.left() < last_s * 2 * (repeats + 1) + 5:
            rows.append({"batch": batch, "skipped": "budget"})
            break
        row: dict = {"batch": batch}
        try:
            features = features_of(batch)
            empty_cache()
            reset_peak()
            encode_with(encoder, features)  # warm-up (cuDNN/cuBLAS plans)
            sync()
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                tokens = encode_with(encoder, features)
                sync()
                times.append(time.perf_counter() - started)
            if reference is not None:  # row i is distinct segment i % 16: compare with its exact tokens
                expected = reference.repeat(-(-batch // reference.shape[0]), 1, 1)[:batch]
                row["agreement_vs_exact"] = agreement(tokens.cpu(), expected)
            tokens = None
            seconds = sorted(times)[len(times) // 2]
            last_s = seconds
            row.update(
                {
                    "s_per_batch": round(seconds, 4),
                    "segments_per_s": round(batch / seconds, 2),
                    "x_real_time": round(batch * 10.24 / seconds, 1),
                    "peak_gpu_gb": peak_gb(),
                }
            )
        except torch.cuda.OutOfMemoryError as exc:
            row["error"] = f"OOM: {str(exc)[:160]}"
            rows.append(row)
            break
        finally:
            features = None
            empty_cache()
        rows.append(row)
        batch *= 2
    return rows


def section_encoder(args, codec, deadline: float) -> None:
    import torch

    with Section("encoder", args.encoder_budget_s, deadline) as section:
        distinct = 16
        samples, valid = segments_of(codec, distinct, seed=2)
        base = codec.segment_features(samples, valid)  # [16, 1024, 128] on the GPU

        def features_of(batch: int):
            reps = -(-batch // distinct)
            return base.repeat(reps, 1, 1)[:batch].contiguous()

        section.out["repeats"] = args.repeats
        exact = encode_with(codec.encoder, base).cpu()  # official batching: the exact tokens
        ladders = section.out.setdefault("ladders", {})
        # "float32": official batching (exact tokens; modules that are not batch-invariant on this
        # device run one segment at a time); "*_batched": every module batched, agreement measured
        plan = (
            ("float32", "official", torch.float32, 0.4, args.max_exact_batch),
            ("float32_batched", "batched", torch.float32, 0.6, args.max_batch),
            ("bfloat16_batched", "batched", torch.bfloat16, 1.0, args.max_batch),
        )
        for name, batching, dtype, share, max_batch in plan:
            with Section(name, section.left() * share, section.deadline, parent=ladders) as sub:
                encoder = codec.encoder
                if batching != "official" or dtype != torch.float32:
                    encoder = copy.deepcopy(codec.encoder)
                    encoder.batching = batching
                    encoder.set_compute_dtype(dtype)
                sub.out["batching"] = batching
                sub.out["rows"] = encoder_ladder(
                    sub, encoder, features_of, max_batch, args.repeats, reference=exact
                )
            encoder = None
            empty_cache()


def section_decoder(args, codec, deadline: float) -> None:
    import torch

    from codec.sampler import LATENT_SHAPE, NoiseSource, ddim_sample

    with Section("decoder", args.decoder_budget_s, deadline) as section:
        out = section.out
        started = time.monotonic()
        decoder = codec._require_decoder()
        out["load_s"] = round(time.monotonic() - started, 1)
        steps = args.decoder_steps
        out["steps_run"] = steps
        out["note"] = f"per-window figures extrapolated from {steps} DDIM steps to 50: (50·step + tail)/W"
        rows = []
        for windows in args.decoder_windows:
            if section.left() < 15:
                rows.append({"windows": windows, "skipped": "budget"})
                break
            row: dict = {"windows": windows}
            try:
                generator = torch.Generator().manual_seed(windows)
                n = codec.config.tokens_per_segment
                tokens = [
                    torch.stack(
                        [
                            torch.randint(0, codec.config.semantic_vocab_size, (n,), generator=generator),
                            torch.randint(0, 8192, (n,), generator=generator),
                        ],
                        dim=-1,
                    )
                    for _ in range(windows)
                ]
                noise = NoiseSource(
                    explicit=(
                        torch.randn(windows, *LATENT_SHAPE, generator=generator),
                        torch.randn(windows, steps, *LATENT_SHAPE, generator=generator),
                    )
                )
                schedule = decoder.schedule(steps)
                reset_peak()
                with torch.inference_mode():
                    cond, uncond = decoder.conditions.build(tokens)
                    x_t, step_noise = noise.draw(list(range(windows)), steps)
                    latent = ddim_sample(decoder.unet, schedule, cond, uncond, x_t, step_noise)  # warm-up
                    sync()
                    t0 = time.perf_counter()
                    latent = ddim_sample(decoder.unet, schedule, cond, uncond, x_t, step_noise)
                    sync()
                    step_s = (time.perf_counter() - t0) / steps
                    t0 = time.perf_counter()
                    decoder.mel_to_wave(decoder.latent_to_mel(latent))
                    sync()
                    tail_s = time.perf_counter() - t0
                per_window = (50 * step_s + tail_s) / windows
                row.update(
                    {
                        "unet_step_s": round(step_s, 4),
                        "vae_vocoder_s": round(tail_s, 4),
                        "s_per_window_at_50_steps": round(per_window, 3),
                        "windows_per_s_at_50_steps": round(1 / per_window, 3),
                        "x_real_time_at_50_steps": round(10.24 / per_window, 2),
                        "peak_gpu_gb": peak_gb(),
                    }
                )
            except torch.cuda.OutOfMemoryError as exc:
                row["error"] = f"OOM: {str(exc)[:160]}"
                rows.append(row)
                break
            rows.append(row)
        out["rows"] = rows
        codec.decoder = None
        empty_cache()


def write_corpus(folder: Path, files: int, seconds: float) -> None:
    import numpy as np
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000
    for index in range(files):
        wave = 0.3 * np.sin(2 * np.pi * (120 + 7 * index) * t * (1 + 0.1 * np.sin(np.pi * t)))
        wave += 0.03 * rng.standard_normal(len(t))
        soundfile.write(folder / f"clip_{index:05d}.wav", wave.astype(np.float32), 16000, subtype="PCM_16")


def pipeline_child(args) -> None:
    """Runs in a child process: one tokenize run with one GPU actor; prints one JSON line."""
    from pipeline.config import TokenizeConfig
    from pipeline.runtime.ray_setup import init_ray
    from pipeline.tokenize.job import run_tokenize

    work = Path(args.pipeline_child)
    write_corpus(work / "in", args.pipeline_files, args.pipeline_seconds)
    config = TokenizeConfig(
        input=str(work / "in"),
        output=str(work / "out"),
        device=args.device,
        codec_size=args.size,
        weights=args.weights,
        token_rate=args.token_rate,
        semantic_vocab_size=args.vocab,
        num_encoders=1,
        gpus_per_encoder=1.0,
        encode_batch_segments=args.pipeline_batch,
        encode_batching=args.pipeline_batching,
        progress_interval_s=3600,
    )
    started = time.monotonic()
    init_ray(None)
    ray_s = time.monotonic() - started
    with open(os.devnull, "w") as sink:
        summary = run_tokenize(config, stream=sink)
    import ray

    ray.shutdown()
    print(
        json.dumps(
            {
                "files": args.pipeline_files,
                "seconds_per_file": args.pipeline_seconds,
                "encode_batch_segments": args.pipeline_batch,
                "encode_batching": args.pipeline_batching,
                "items": summary.items,
                "items_ok": summary.items_ok,
                "items_failed": summary.items_failed,
                "audio_hours": round(summary.audio_hours, 4),
                "ray_init_s": round(ray_s, 1),
                "wall_s": round(summary.wall_seconds, 1),
                "x_real_time": round(summary.real_time_factor, 2),
                "note": f"wall includes Ray start and the model load ({args.size}, {args.weights})",
            }
        )
    )


def section_pipeline(args, deadline: float) -> None:
    with Section("pipeline", args.pipeline_budget_s, deadline) as section:
        for share, batching in ((0.5, "official"), (1.0, "batched")):
            with Section(batching, section.left() * share, section.deadline, parent=section.out) as sub:
                pipeline_run(args, sub, batching)


def pipeline_run(args, section: Section, batching: str) -> None:
    """One `pipeline_child` run (its own process group, killed on timeout) into section.out."""
    timeout = max(1.0, section.left() - 5)
    with tempfile.TemporaryDirectory(prefix="semtok-gpu-check-") as work:
        command = [
            sys.executable,
            __file__,
            "--pipeline-child",
            work,
            "--pipeline-files",
            str(args.pipeline_files),
            "--pipeline-seconds",
            str(args.pipeline_seconds),
            "--size",
            args.size,
            "--device",
            args.device,
            "--pipeline-batch",
            str(args.pipeline_batch),
            "--weights",
            args.weights,
            "--token-rate",
            str(args.token_rate),
            "--vocab",
            str(args.vocab),
            "--pipeline-batching",
            batching,
        ]
        # its own session, so a timeout also ends the Ray processes it started
        child = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            section.out["error"] = f"timed out after {timeout:.0f} s"
            return
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if child.returncode != 0 or not lines:
            section.out["error"] = f"child exit {child.returncode}: {stderr[-600:]}"
            return
        section.out.update(json.loads(lines[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-s", type=float, default=460.0, help="overall deadline (watchdog)")
    parser.add_argument("--token-rate", type=int, default=50)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--weights", default="random:0")
    parser.add_argument("--agreement-segments", type=int, default=4)
    parser.add_argument("--agreement-budget-s", type=float, default=100.0)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--max-exact-batch", type=int, default=64, help="official batching ladder's top")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--encoder-budget-s", type=float, default=130.0)
    parser.add_argument("--decoder-steps", type=int, default=5)
    parser.add_argument("--decoder-windows", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--decoder-budget-s", type=float, default=70.0)
    parser.add_argument("--pipeline-files", type=int, default=32)
    parser.add_argument("--pipeline-seconds", type=float, default=20.0)
    parser.add_argument("--pipeline-batch", type=int, default=64)
    parser.add_argument("--pipeline-budget-s", type=float, default=150.0)
    parser.add_argument("--pipeline-batching", default="official", choices=["official", "batched"])
    parser.add_argument("--size", default="full", choices=["full", "tiny"])
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of this script only")
    parser.add_argument("--pipeline-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pipeline_child:
        pipeline_child(args)
        return

    deadline = time.monotonic() + args.budget_s
    watchdog = threading.Timer(
        args.budget_s, lambda: (RESULT.setdefault("error", "overall deadline hit"), emit_and_exit(0))
    )
    watchdog.daemon = True
    watchdog.start()
    import torch

    RESULT.update({"torch": torch.__version__, "device": args.device})
    if args.device == "cuda" and not torch.cuda.is_available():
        RESULT.update({"cuda": False, "error": "cuda unavailable: nothing measured"})
        emit_and_exit(0)
    cuda = args.device == "cuda"
    RESULT.update(
        {
            "cuda": cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
            if cuda
            else None,
            "cpu_threads": torch.get_num_threads(),
            "size": args.size,
            "weights": args.weights,
            "token_rate": args.token_rate,
            "semantic_vocab_size": args.vocab,
        }
    )
    try:
        from codec import SemantiCodec

        started = time.monotonic()
        codec = SemantiCodec(
            args.token_rate, args.vocab, weights=args.weights, size=args.size, device=args.device
        )
        RESULT["load_s"] = round(time.monotonic() - started, 1)
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        RESULT["error"] = f"codec load failed: {type(exc).__name__}: {exc}"
        emit_and_exit(0)
    section_agreement(args, codec, deadline)
    section_encoder(args, codec, deadline)
    section_decoder(args, codec, deadline)
    del codec
    empty_cache()
    section_pipeline(args, deadline)
    emit_and_exit(0)


if __name__ == "__main__":
    main()
