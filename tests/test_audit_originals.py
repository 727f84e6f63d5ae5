"""The audit's reference audio: the originals read and decoded again as tokenize read and decoded them.

No cluster: `ReadOriginals` is called as Ray Data's `flat_map` would call it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from pipeline.audit import stage
from pipeline.audit.stage import AuditItem, ReadOriginals
from pipeline.io.audio_decoding import SpilledAudio
from pipeline.io.sources import read_unit
from pipeline.records import DecodedAudio, InputUnit
from tests import poison
from tests.corpus import speech_like, wav_bytes


def _row(path: Path, *, duration_s: float) -> dict[str, str]:
    unit = InputUnit("u1", "files", (path.as_uri(),))
    (item,) = read_unit(unit)
    spec = AuditItem(item.item_id, "test", "speech", 7, np.zeros((4, 2), dtype=np.uint16), duration_s)
    return {"unit": unit.to_json(), "items": json.dumps([spec.to_json()])}


class _Spy:
    """The shared decoder, noting what each decode returned."""

    def __init__(self, decoder: Any, seen: list[tuple[str, type]]) -> None:
        self._decoder, self._seen = decoder, seen

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        return self._note("bytes", self._decoder.decode(*args, **kwargs))

    def decode_file(self, *args: Any, **kwargs: Any) -> Any:
        return self._note("spooled file", self._decoder.decode_file(*args, **kwargs))

    def _note(self, source: str, audio: Any) -> Any:
        self._seen.append((source, type(audio)))
        return audio


def test_a_long_original_is_streamed_through_a_spill_file_and_only_its_start_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item over `stream_min_seconds` is decoded to a local file, not memory, and a big one is
    spooled to a local file before decoding: the reference is the in-memory decode's start, bit for
    bit, and no scratch file is left behind."""
    seen: list[tuple[str, type]] = []
    shared = stage.shared_decoder
    monkeypatch.setattr(stage, "shared_decoder", lambda **kwargs: _Spy(shared(**kwargs), seen))
    source = tmp_path / "long.wav"
    stereo = np.stack([speech_like(3.0, 44100, seed=1), speech_like(3.0, 44100, seed=2)], axis=1)
    sf.write(source, stereo, 44100, subtype="FLOAT")
    row = _row(source, duration_s=3.0)
    options = {"max_samples": 16000, "channel_policy": "mean", "max_audio_seconds": None}
    spill = tmp_path / "spill"

    (in_memory,) = ReadOriginals(**options, stream_min_seconds=None, spool_min_bytes=None)(dict(row))
    streamed_audit = ReadOriginals(
        **options, stream_min_seconds=1.0, spool_min_bytes=1024, spill_dir=str(spill)
    )
    (streamed,) = streamed_audit(dict(row))

    assert seen == [("bytes", DecodedAudio), ("spooled file", SpilledAudio)]
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


@pytest.mark.parametrize("poisoned", [poison.SEGV, poison.HANG], ids=["crash", "hang"])
def test_an_original_that_now_crashes_or_hangs_the_decoder_is_a_row(tmp_path: Path, poisoned: bytes) -> None:
    """An original replaced since it was tokenized may crash or hang the decoder: the decode runs
    in a child process with a time limit, so the item is an error row and the others are audited."""
    good, bad = tmp_path / "good.wav", tmp_path / "bad.wav"
    good.write_bytes(wav_bytes(speech_like(1.0, 16000, seed=4), 16000))
    bad.write_bytes(poisoned + b"\0" * 64)
    unit = InputUnit("u1", "files", (bad.as_uri(), good.as_uri()))
    items = [
        AuditItem(item.item_id, "test", "speech", 7, np.zeros((4, 2), dtype=np.uint16), 1.0).to_json()
        for item in read_unit(unit)
    ]
    audit = ReadOriginals(
        max_samples=8000,
        channel_policy="first",
        max_audio_seconds=None,
        decode_fn=poison.DECODE_FN,
        item_timeout_s=3.0,
        spill_dir=str(tmp_path / "spill"),
    )
    rows = {row["item_id"]: row for row in audit({"unit": unit.to_json(), "items": json.dumps(items)})}
    assert len(rows) == 2
    failed = rows[items[0]["item_id"]]
    assert failed["reason"] == "original_undecodable", failed
    assert ("decode_crashed" if poisoned == poison.SEGV else "decode_timeout") in failed["detail"]
    ok = rows[items[1]["item_id"]]
    assert not ok["stage"] and len(ok["reference"]) == 8000 * 4
