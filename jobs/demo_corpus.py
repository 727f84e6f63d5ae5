"""`semtok demo-corpus DIR`: a few synthetic clips to try the pipeline on, with no downloads.

Varied on purpose: rates, channels, formats and lengths the pipeline must handle, plus one file
that is not audio, so the first run also shows the errors table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile


def _voice(seconds: float, rate: int, f0: float, seed: int) -> np.ndarray:
    """A buzzy, syllable-modulated tone: cheap stand-in for speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 0.8 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    tone = sum(np.sin(h * phase) / h for h in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.2 * tone * envelope + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write_demo_corpus(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clips = [
        ("speech_16k.wav", _voice(4.0, 16000, 120, 0), 16000, "PCM_16"),
        ("speech_long.flac", _voice(25.0, 16000, 180, 1), 16000, "PCM_16"),
        (
            "stereo 44k.wav",
            np.stack([_voice(6.0, 44100, 140, 2), _voice(6.0, 44100, 220, 3)], 1),
            44100,
            "PCM_24",
        ),
        ("short_48k.ogg", _voice(0.5, 48000, 200, 4), 48000, "VORBIS"),
    ]
    written = []
    for name, audio, rate, subtype in clips:
        path = folder / name
        soundfile.write(path, audio, rate, subtype=subtype)
        written.append(path)
    broken = folder / "not_audio.wav"
    broken.write_bytes(b"this is not a wav file\n")
    written.append(broken)
    return written
