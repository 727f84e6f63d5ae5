"""Session-wide test fixtures: a real S3 server (SeaweedFS) and small synthesized audio.

Nothing here mocks storage: S3 tests talk to a real `weed mini` bound to 127.0.0.1.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.corpus import speech_like, wav_bytes
from tests.s3_server import SeaweedS3

pytest_plugins = ["tests.golden"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session (2 CPUs here), every listener on loopback.

    Its Prometheus endpoint is at http://127.0.0.1:<ray_local.metrics_port>/metrics, refreshed
    every second so tests can watch metrics during a run.
    """
    import os
    from types import SimpleNamespace

    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    port = free_port()
    if not ray.is_initialized():
        ray.init(
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
            _metrics_export_port=port,
            _system_config={"metrics_report_interval_ms": 1000},
        )
    yield SimpleNamespace(ray=ray, metrics_port=port)
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server per test session (fresh data dir, random loopback ports)."""
    server = SeaweedS3(data_dir=tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["file", "memory", "s3"])
def store(request, tmp_path):
    """(fs, root) on each storage backend: local files, fsspec memory, and the real S3 server."""
    import fsspec

    if request.param == "file":
        yield fsspec.filesystem("file"), str(tmp_path / "out")
        return
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        yield server.filesystem(), server.make_bucket(f"store-{uuid.uuid4().hex[:12]}")
        return
    fs = fsspec.filesystem("memory")
    root = f"memory://test-{uuid.uuid4().hex}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture()
def s3_bucket(s3_server: SeaweedS3) -> str:
    """A fresh bucket per test: 's3://semtok-<random>'."""
    return s3_server.make_bucket(f"semtok-{uuid.uuid4().hex[:12]}")


@pytest.fixture()
def aws_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the standard AWS env vars at the test server for the duration of one test."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server.env


def local_writer(root: Path) -> Callable[[str, bytes], None]:
    """write(name, data) callback for tests.corpus builders, into a local folder."""

    def write(name: str, data: bytes) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return write


def s3_writer(fs, base: str) -> Callable[[str, bytes], None]:  # noqa: ANN001 - s3fs filesystem
    """write(name, data) callback into s3://<base>/<name> through an s3fs filesystem."""

    def write(name: str, data: bytes) -> None:
        fs.pipe_file(f"{base.removeprefix('s3://').rstrip('/')}/{name}", data)

    return write


@pytest.fixture(scope="session")
def tiny_wav_bytes() -> bytes:
    """0.25 s of 16 kHz mono PCM16 speech-like audio."""
    return wav_bytes(speech_like(0.25, 16000, seed=1), 16000)


@pytest.fixture(scope="session")
def tiny_audio() -> np.ndarray:
    """The float32 signal behind tiny_wav_bytes (before PCM16 quantization)."""
    return speech_like(0.25, 16000, seed=1)


@pytest.fixture(scope="session")
def tokenized_output(tmp_path_factory: pytest.TempPathFactory, ray_local):  # noqa: ANN001, ARG001
    """A small finished semtok output (tiny random codec, local disk) for tests of its readers.

    14 items of 0.5–14 s (one over a segment) in 5 units of 3 files, plus one undecodable file, so
    the output holds tokens, an error row and both formats. Returns (output root, version url,
    {item id: duration in s}). Read it, never write into it: it is shared by the session."""
    from types import SimpleNamespace

    from pipeline.config import TokenizeConfig
    from pipeline.dataset.layout import OutputLayout
    from pipeline.tokenize.fingerprint import job_fingerprint
    from pipeline.tokenize.job import run_tokenize
    from tests.helpers import TINY

    source = tmp_path_factory.mktemp("tokenized-in")
    durations = {}
    for index in range(14):
        seconds = 0.5 + index if index < 13 else 14.0
        sr = (16000, 22050, 44100)[index % 3]
        name = f"clip{index:02d}"
        (source / f"{name}.wav").write_bytes(wav_bytes(speech_like(seconds, sr, seed=index), sr))
        durations[name] = seconds
    (source / "broken.wav").write_bytes(b"RIFF not really audio")
    out = tmp_path_factory.mktemp("tokenized-out")
    config = TokenizeConfig(
        input=str(source),
        output=str(out),
        files_per_unit=3,
        formats=("parquet", "webdataset"),
        progress_interval_s=60,
        **TINY,
    )
    summary = run_tokenize(config)
    assert summary.items_ok == 14 and summary.items_failed == 1
    layout = OutputLayout.for_fingerprint(str(out), job_fingerprint(config))
    return SimpleNamespace(root=str(out), version_url=layout.version_url, durations=durations, config=config)
