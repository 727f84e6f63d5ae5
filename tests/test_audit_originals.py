"""The audit's reference audio: read back from the originals as tokenize decoded them.

No cluster: `ReadOriginals` is called as Ray Data's `flat_map` would call it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.audit import stage
from pipeline.audit.stage import AuditItem, ReadOriginals
from pipeline.io.audio_decoding import SpilledAudio, decode_audio
from pipeline.io.sources import read_unit
from pipeline.records import DecodedAudio, InputUnit
from tests.corpus import speech_like


def _row(path: Path, *, duration_s: float) -> dict[str, str]:
    unit = InputUnit("u1", "files", (path.as_uri(),))
    (item,) = read_unit(unit)
    spec = AuditItem(item.item_id, "test", "speech", 7, np.zeros((4, 2), dtype=np.uint16), duration_s)
    return {"unit": unit.to_json(), "items": json.dumps([spec.to_json()])}


def test_a_long_original_is_streamed_through_a_spill_file_and_only_its_start_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item over `stream_min_seconds` is decoded to a local file, not memory: the reference is
    the in-memory decode's start, bit for bit, and no spill file is left behind."""
    decoded: list[type] = []

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - decode_audio's signature
        audio = decode_audio(*args, **kwargs)
        decoded.append(type(audio))
        return audio

    monkeypatch.setattr(stage, "decode_audio", spy)
    source = tmp_path / "long.wav"
    stereo = np.stack([speech_like(3.0, 44100, seed=1), speech_like(3.0, 44100, seed=2)], axis=1)
    sf.write(source, stereo, 44100, subtype="FLOAT")
    row = _row(source, duration_s=3.0)
    options = {"max_samples": 16000, "channel_policy": "mean", "max_audio_seconds": None}
    spill = tmp_path / "spill"

    (in_memory,) = ReadOriginals(**options, stream_min_seconds=None)(dict(row))
    (streamed,) = ReadOriginals(**options, stream_min_seconds=1.0, spill_dir=str(spill))(dict(row))

    assert decoded == [DecodedAudio, SpilledAudio]
    assert not in_memory["stage"] and not streamed["stage"], (in_memory["detail"], streamed["detail"])
    reference = np.frombuffer(streamed["reference"], dtype=np.float32)
    assert reference.shape == (16000,) and streamed["reference"] == in_memory["reference"]
    assert os.listdir(spill) == []


def test_a_streamed_original_that_changed_length_is_reported(tmp_path: Path) -> None:
    source = tmp_path / "long.wav"
    sf.write(source, speech_like(3.0, 16000, seed=3), 16000, subtype="FLOAT")
    spill = tmp_path / "spill"
    audit = ReadOriginals(
        max_samples=8000,
        channel_policy="first",
        max_audio_seconds=None,
        stream_min_seconds=1.0,
        spill_dir=str(spill),
    )
    (row,) = audit(_row(source, duration_s=2.0))
    assert row["reason"] == "original_changed" and row["reference"] == b""
    assert os.listdir(spill) == []
