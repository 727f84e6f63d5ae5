"""A real `ray job submit`: a separate Ray head with its dashboard, the job API over HTTP, S3 in/out.

This is how a cluster runs semtok (KubeRay RayJob, `ray job submit`): the entrypoint is
`python -m jobs.tokenize --config job.yaml`, the code travels as the job's working_dir, and the
storage credentials as runtime_env env vars. The head is started by this test on loopback only,
with its own --temp-dir and ports, so it never touches the session's Ray (used by other tests in
this process: we never call ray.init/shutdown here; only the HTTP JobSubmissionClient talks to it).

Teardown never runs `ray stop` (it kills every Ray process on the machine): the head runs with
--block in its own process group, and we end that group and the processes it started, by pid.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.config import TokenizeConfig
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.manifest import load_errors, load_tokens
from pipeline.dataset.run_records import read_run_records
from pipeline.tokenize.fingerprint import job_fingerprint
from tests.conftest import free_port, s3_writer
from tests.corpus import build_corpus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc for cleanup"),
]

REPO = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_S = 240
# Keep the uploaded working_dir to the code the job imports (Ray also honours .gitignore).
EXCLUDES = [
    ".venv",
    ".cache",
    ".git",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "__pycache__",
    "tests",
    "bench",
    "infra",
    "shared",
    "build",
    "dist",
]


def _proc_start(pid: int) -> str | None:
    """Start time of a process (field 22 of /proc/<pid>/stat), to tell a pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _descendants(root: int) -> list[tuple[int, str]]:
    """(pid, start time) of every living descendant of `root`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            start = _proc_start(child)
            if start is not None:
                found.append((child, start))
                todo.append(child)
    return found


@dataclass
class RayHead:
    process: subprocess.Popen
    dashboard_url: str
    temp_dir: str
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def stop(self, grace_s: float = 10.0) -> None:
        """End the head and everything it started (by pid, checked against start times)."""
        started = _descendants(self.process.pid)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own group: start_new_session=True
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(grace_s)
        deadline = time.monotonic() + grace_s
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [(pid, start) for pid, start in started if _proc_start(pid) == start]
            for pid, _ in alive:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            while alive and time.monotonic() < deadline:
                time.sleep(0.2)
                alive = [(pid, start) for pid, start in alive if _proc_start(pid) == start]
            if not alive:
                break


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _wait_http(url: str, head: RayHead, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(
        f"the Ray dashboard did not answer at {url} within {timeout_s} s "
        f"(head exit code {head.process.poll()}); `ray start` log:\n{head.log_tail()}"
    )


@pytest.fixture()
def ray_head() -> Iterator[RayHead]:
    """A 2-CPU Ray head with dashboard and job API, every listener on 127.0.0.1."""
    pytest.importorskip("ray.dashboard", reason="needs ray[default] (dashboard, job submission)")
    pytest.importorskip("aiohttp", reason="the dashboard needs ray[default]'s aiohttp")
    ray_bin = Path(sys.executable).parent / "ray"
    if not ray_bin.exists():
        pytest.skip(f"no `ray` script next to {sys.executable}")
    # Short: Ray's unix socket paths under the temp dir must stay below ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="semtok-rayjob-", dir="/tmp")
    (
        gcs,
        dashboard,
        client,
        node_manager,
        object_manager,
        metrics,
        agent_http,
        agent_grpc,
        runtime_env_agent,
    ) = _free_ports(9)
    command = [
        str(ray_bin),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(gcs),
        "--include-dashboard",
        "true",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard),
        "--ray-client-server-port",
        str(client),
        "--node-manager-port",
        str(node_manager),
        "--object-manager-port",
        str(object_manager),
        "--metrics-export-port",
        str(metrics),
        "--dashboard-agent-listen-port",
        str(agent_http),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--runtime-env-agent-port",
        str(runtime_env_agent),
        "--min-worker-port",
        "0",
        "--max-worker-port",
        "0",
        "--num-cpus",
        "2",
        "--object-store-memory",
        str(400 * 1024 * 1024),
        "--temp-dir",
        temp_dir,
        "--disable-usage-stats",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("AWS_")}
    # Token auth off on this loopback-only head: Ray (2.5x) turns it on whenever ~/.ray/auth_token
    # exists, which would make the test depend on the user's token; the job API is what we test.
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    log_path = Path(temp_dir) / "ray-start.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=temp_dir,
            start_new_session=True,
        )
    head = RayHead(process, f"http://127.0.0.1:{dashboard}", temp_dir, log_path)
    try:
        _wait_http(f"{head.dashboard_url}/api/version", head, timeout_s=120)
        yield head
    finally:
        head.stop()
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(client, head: RayHead, **kwargs) -> str:
    """Submit, retrying while the head's job agent is still coming up."""
    deadline = time.monotonic() + 90
    while True:
        try:
            return client.submit_job(**kwargs)
        except Exception as error:  # noqa: BLE001 - the SDK raises RuntimeError for HTTP errors
            if time.monotonic() > deadline or head.process.poll() is not None:
                raise AssertionError(f"submit_job failed: {error}\n{head.log_tail()}") from error
            time.sleep(2)


def test_tokenize_job_submitted_to_a_ray_cluster(ray_head: RayHead, s3_server, s3_bucket, tmp_path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    spec = build_corpus(s3_writer(s3_server.filesystem(), f"{s3_bucket}/in"), long_seconds=15)
    job = {
        "input": f"{s3_bucket}/in",
        "output": f"{s3_bucket}/out",
        "codec_size": "tiny",
        "weights": "random:0",
        "files_per_unit": 6,
        "progress_interval_s": 5,
    }
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(job))
    client = JobSubmissionClient(ray_head.dashboard_url)
    job_id = _submit(
        client,
        ray_head,
        entrypoint=f"{shlex.quote(sys.executable)} -m jobs.tokenize --config {shlex.quote(str(config_path))}",
        runtime_env={
            "working_dir": str(REPO),
            "excludes": EXCLUDES,
            "env_vars": {**s3_server.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
        },
    )
    try:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        status = client.get_job_status(job_id)
        while not status.is_terminal() and time.monotonic() < deadline:
            time.sleep(2)
            status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        assert status == JobStatus.SUCCEEDED, f"job {job_id} is {status}; logs:\n{logs[-6000:]}"
    finally:
        if not client.get_job_status(job_id).is_terminal():
            client.stop_job(job_id)
    assert "[semtok] done:" in logs

    # Every corpus item exactly once, in the tokens or in the errors with its reason.
    config = TokenizeConfig.load(str(config_path))
    fs = s3_server.filesystem()
    layout = OutputLayout.for_fingerprint(config.output, job_fingerprint(config))
    tokens, errors = load_tokens(fs, layout), load_errors(fs, layout)
    ids = tokens.column("id").to_pylist() + errors.column("id").to_pylist()
    assert len(ids) == len(set(ids)) and set(ids) == set(spec.by_id())
    reasons = dict(zip(errors.column("id").to_pylist(), errors.column("reason").to_pylist(), strict=True))
    for item in spec.items:
        assert reasons.get(item.item_id, "ok") == item.expected, item.item_id
    (record,) = read_run_records(fs, layout).values()
    assert record["items"] == len(spec.items) and record["started_at"] and record["finished_at"]
    assert record["config"]["storage_options"] == {}  # credentials came from the job's env vars
