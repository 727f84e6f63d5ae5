"""The reference corpus of the token regression test, and how its tokens are tokenized and dumped.

Why: refactors (moving modules, new stages) must not change a single token. The corpus is
synthesized from seeds (rates 8–96 kHz, mono/stereo/5.1, 0.3–25 s, wav/flac), tokenized by the
pipeline with the tiny random codec, and compared with `tests/data/tiny_tokens_reference.npz`,
recorded from commit de2ad07 (before the subpackage split) by `python -m tests.token_reference OUT.npz`.
Only numpy and soundfile are used to write the corpus, so any version of the code tokenizes the
same bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

# (name, sample rate, channels, seconds, format)
ITEMS = [
    ("a_8k_mono", 8000, 1, 3.0, "WAV"),
    ("b_16k_mono", 16000, 1, 0.3, "WAV"),
    ("c_16k_mono_long", 16000, 1, 25.0, "FLAC"),
    ("d_22k_stereo", 22050, 2, 7.5, "WAV"),
    ("e_441k_stereo", 44100, 2, 12.0, "FLAC"),
    ("f_48k_mono", 48000, 1, 10.24, "WAV"),
    ("g_48k_51", 48000, 6, 4.0, "WAV"),
    ("h_96k_stereo", 96000, 2, 2.5, "FLAC"),
    ("i_16k_silence", 16000, 1, 5.0, "WAV"),
    ("j_32k_mono", 32000, 1, 10.3, "WAV"),
]
TINY = {"codec_size": "tiny", "weights": "random:0", "token_rate": 50, "semantic_vocab_size": 16384}


def synth(seed: int, sr: int, channels: int, seconds: float) -> np.ndarray:
    """Speech-like test audio: harmonics of a wandering pitch under noise, per channel."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    out = np.empty((n, channels), dtype=np.float32)
    for c in range(channels):
        f0 = 110 + 40 * c + 25 * np.sin(2 * np.pi * 0.7 * t + c)
        phase = 2 * np.pi * np.cumsum(f0) / sr
        voice = sum(np.sin(k * phase) / k for k in range(1, 6))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2.3 * t + seed)
        out[:, c] = 0.2 * voice * envelope + 0.02 * rng.standard_normal(n)
    return out


def write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (name, sr, channels, seconds, fmt) in enumerate(ITEMS):
        audio = (
            np.zeros((int(seconds * sr), 1), np.float32)
            if "silence" in name
            else synth(seed, sr, channels, seconds)
        )
        suffix = ".flac" if fmt == "FLAC" else ".wav"
        sf.write(folder / f"{name}{suffix}", audio, sr, format=fmt, subtype="PCM_16")


def tokens_of(output_version: str) -> dict[str, np.ndarray]:
    """{item id: int32 [frames, 2]} from a version folder's token Parquet files."""
    import pyarrow.parquet as pq

    tokens: dict[str, np.ndarray] = {}
    for path in sorted(Path(output_version, "tokens").glob("*.parquet")):
        table = pq.read_table(path).to_pydict()
        for item, semantic, acoustic in zip(
            table["id"], table["semantic_tokens"], table["acoustic_tokens"], strict=True
        ):
            tokens[item] = np.stack([np.asarray(semantic), np.asarray(acoustic)], axis=1).astype(np.int32)
    return tokens


def main(out_npz: str) -> None:
    """Tokenize the reference corpus with whatever code is importable and save its tokens."""
    import tempfile

    from pipeline.config import TokenizeConfig

    try:
        from pipeline.tokenize.job import run_tokenize
    except ImportError:  # before the subpackage split
        from pipeline.tokenize import run_tokenize  # type: ignore[no-redef]

    with tempfile.TemporaryDirectory() as tmp:
        write_corpus(Path(tmp, "in"))
        config = TokenizeConfig(
            input=str(Path(tmp, "in")), output=str(Path(tmp, "out")), files_per_unit=4, **TINY
        )
        run_tokenize(config)
        (version,) = [p for p in Path(tmp, "out").iterdir() if p.is_dir()]
        np.savez_compressed(out_npz, **tokens_of(str(version)))


if __name__ == "__main__":
    main(sys.argv[1])
