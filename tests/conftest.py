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
