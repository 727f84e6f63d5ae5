"""The job's Prometheus metrics appear on Ray's metrics endpoint while a tokenize job runs."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from pathlib import Path

from pipeline.config import TokenizeConfig
from pipeline.runtime import telemetry_names as names
from pipeline.runtime.telemetry import DATASET_TAG
from pipeline.tokenize.job import run_tokenize
from tests.corpus import speech_like, wav_bytes


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    except OSError:
        return ""


def test_metrics_are_scraped_during_a_run(ray_local, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for index in range(6):
        audio = wav_bytes(speech_like(15.0, 16000, seed=index), 16000)
        (tmp_path / "in" / f"c{index}.wav").write_bytes(audio)
    (tmp_path / "in" / "broken.wav").write_bytes(b"nope")
    seen: set[str] = set()
    failure_labels: set[tuple[str, str]] = set()  # (dataset, reason): other tests' series linger
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            text = _scrape(ray_local.metrics_port)
            seen.update(re.findall(r"^([a-zA-Z_:][\w:]*)", text, re.M))
            for labels in re.findall(rf"^{names.ITEMS_FAILED}{{([^}}]*)}}", text, re.M):
                pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
                failure_labels.add((pairs.get(DATASET_TAG, ""), pairs.get(names.FAILED_REASON_TAG, "")))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    config = TokenizeConfig(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        codec_size="tiny",
        weights="random:7",
        files_per_unit=2,
        encode_batch_segments=2,
        progress_interval_s=60,
    )
    summary = run_tokenize(config)
    # A weights seed no other test uses gives this run a dataset version, hence a metric tag, of its own.
    (version,) = [path.name for path in (tmp_path / "out").iterdir() if path.is_dir()]
    ours = {reason for dataset, reason in failure_labels if dataset == version}
    deadline = time.monotonic() + 20  # metrics are exported once a second; allow the last report
    while time.monotonic() < deadline and not (
        {names.UNITS_COMMITTED, names.ITEMS_FAILED} <= seen and "undecodable" in ours
    ):
        time.sleep(0.5)
        ours = {reason for dataset, reason in failure_labels if dataset == version}
    stop.set()
    watcher.join()
    assert summary.items_failed == 1
    expected = {
        names.AUDIO_SECONDS_ENCODED,
        names.ITEMS_DONE,
        names.ITEMS_FAILED,
        names.UNITS_COMMITTED,
        names.ENCODE_BATCH_FILL_RATIO,
        names.ENCODE_ACTORS,
        names.ENCODE_BATCH_SECONDS + "_count",
    }
    assert expected <= seen, expected - seen
    assert ours == {"undecodable"}, failure_labels
