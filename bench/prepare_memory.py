"""Peak memory of decode_audio per resampler: each case in a fresh process (ru_maxrss growth).

    python bench/prepare_memory.py --seconds 600 --rate 44100 --channels 2

Writes a PCM16 WAV of that shape, then reports for each resampler the decoded float32 size, the
peak RSS growth of one decode_audio call and its wall time. The growth over the decoded size is the
working-memory multiple to plan max_decoded_bytes against worker memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

_CHILD = """
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--rate", type=int, default=44100)
    parser.add_argument("--channels", type=int, default=2)
    args = parser.parse_args()
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
                [sys.executable, "-c", _CHILD, str(path), resampler],
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).parents[1],
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"  {resampler:9s} peak RSS +{result['rss_growth_mib']:.0f} MiB "
                f"({result['rss_growth_mib'] / decoded_mib:.1f}x decoded), {result['wall_s']:.2f} s"
            )


if __name__ == "__main__":
    main()
