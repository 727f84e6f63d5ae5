"""Cost of `semtok audit`: decode seconds per audited item and the audit's wall time.

Tokenizes N synthetic clips (speech-like, chords, noise bursts; `--seconds` each) into a fresh
local output, then audits all N of them (sampling is a no-op when N is the population) and prints
the audit's own timing figures. Random weights: the scores are meaningless, the costs are real.

    PYTHONPATH=. python bench/audit_cost.py --items 20 --cpus-per-decoder 1.5 # full size, 50 steps, CPU
    PYTHONPATH=. python bench/audit_cost.py --items 20 --size tiny --steps 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.audit.job import AuditConfig, run_audit
from pipeline.config import TokenizeConfig
from pipeline.tokenize.job import run_tokenize
from tests.corpus import speech_like


def _clip(index: int, seconds: float) -> tuple[str, np.ndarray]:
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    if index % 3 == 0:
        return "speech", speech_like(seconds, 16000, seed=index)
    if index % 3 == 1:
        chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6))
        return "music", (0.15 * chord).astype(np.float32)
    rng = np.random.default_rng(index)
    return "sound", (0.3 * rng.standard_normal(n) * np.exp(-np.linspace(0, 5, n))).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each clip")
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cpus-per-decoder", type=float, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = []
        for index in range(args.items):
            domain, audio = _clip(index, args.seconds)
            path = root / "in" / domain / f"clip{index:03d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, audio, 16000, subtype="PCM_16")
            rows.append({"id": f"clip{index:03d}", "audio": str(path), "domain": domain, "source": domain})
        manifest = root / "manifest.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        started = time.monotonic()
        run_tokenize(
            TokenizeConfig(
                input=str(manifest),
                output=str(root / "out"),
                codec_size=args.size,
                weights="random:0",
                progress_interval_s=60,
            ),
            stream=sys.stderr,
        )
        tokenize_wall = time.monotonic() - started
        options = {"cpus_per_decoder": args.cpus_per_decoder} if args.cpus_per_decoder else {}
        result = run_audit(
            AuditConfig(output=str(root / "out"), sample=args.items, steps=args.steps, **options)
        )
        document = json.loads(Path(result.json_url).read_text())
        timing = document["timing"]
        per_item = [item["decode_seconds"] for item in document["items"] if not item["error"]]
        print(
            json.dumps(
                {
                    "items": args.items,
                    "seconds_per_item": args.seconds,
                    "size": args.size,
                    "steps": args.steps,
                    "tokenize_wall_s": round(tokenize_wall, 1),
                    "audit_wall_s": round(timing["wall_seconds"], 1),
                    "decode_s_per_item_mean": round(float(np.mean(per_item)), 2),
                    "decode_s_per_item_max": round(float(np.max(per_item)), 2),
                    "decode_s_per_audio_s": round(timing["decode_seconds_per_audio_second"], 3),
                    "score_s_total": round(timing["score_seconds_total"], 1),
                    "decoders": timing["decoders"],
                    "scored": result.scored,
                    "failed": result.failed,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
