"""Every user error of `semtok` is one clear line on stderr, exit 2, no traceback; storage errors
one line and 1; SIGINT/SIGTERM one line and 130/143. All before any Ray cluster starts (but the two
slow signal tests, which interrupt a real tokenize run)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import cli
from jobs.demo_corpus import write_demo_corpus
from pipeline.runtime.interrupt import Interrupted
from tests.helpers import REPO, run_cli
from tests.helpers import TINY_FLAGS as TINY
from tests.tiny_checkpoint import write_checkpoint_folder


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli-errors") / "demo"
    write_demo_corpus(folder)
    return folder


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """main(args): its status and its one stderr line (asserted to be exactly one)."""
    code = cli.main(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return code, lines[0]


def test_argparse_errors_are_one_line(capsys, demo: Path) -> None:
    for args, expected in [
        (["tokenize", str(demo), "--bogus"], "unrecognized arguments: --bogus"),
        (["tokenize", str(demo), "--token-rate", "7"], "invalid choice: 7 (choose from 25, 50, 100)"),
        (["tokenize", str(demo), "--files-per-unit", "many"], "invalid int value: 'many'"),
        (["tokenize", str(demo), "--resampler", "linear"], "invalid choice: 'linear'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["status"], "required: output"),
        ([], "required: command"),
    ]:
        code, line = run(capsys, *args)
        assert code == 2 and line.startswith("semtok: error: ") and expected in line, (args, line)


def test_set_is_never_silently_dropped(capsys, demo: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    for args, expected in [
        (
            ["tokenize", str(demo), "--out", out, "--files-per-unit", "3", "--set", "files_per_unit=4"],
            "--set files_per_unit conflicts with --files-per-unit; give one",
        ),
        (["tokenize", str(demo), "--out", out, "--set", f"input={demo}"], "--set input conflicts with INPUT"),
        (["tokenize", str(demo), "--out", out, "--set", "output=x"], "--set output conflicts with --out"),
        (
            ["tokenize", str(demo), "--out", out, "--format", "parquet", "--set", "formats=[webdataset]"],
            "--set formats conflicts with --format",
        ),
        (
            ["tokenize", str(demo), "--out", out, "--audit-seed", "1", "--set", "audit_seed=2"],
            "--set audit_seed conflicts with --audit-seed",
        ),
        (
            ["tokenize", str(demo), "--out", out, "--set", "num_encoder=2"],
            "unknown --set field 'num_encoder'; did you mean num_encoders",
        ),
        (
            ["tokenize", str(demo), "--out", out, "--set", "files_per_unit=abc"],
            "files_per_unit='abc': must be an integer",
        ),
        (
            ["tokenize", str(demo), "--out", out, "--set", "read_cpus=1", "--set", "read_cpus=2"],
            "--set read_cpus given twice",
        ),
        (["audit", out, "--sample", "3", "--set", "sample=2"], "--set sample conflicts with --sample"),
        (["audit", out, "--set", "decode_batch=2"], "unknown --set field 'decode_batch'"),
    ]:
        code, line = run(capsys, *args)
        assert code == 2 and expected in line, (args, line)


def test_set_values_reach_the_config(demo: Path, tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(f"input: {demo}\noutput: out\naudit_seed: 5\nfiles_per_unit: 7\n")
    args = cli._build_parser().parse_args(
        [
            "tokenize",
            "--config",
            str(tmp_path / "job.yaml"),
            *TINY,
            "--set",
            "audit_seed=0",
            "--set",
            "glob=*.wav",
            "--set",
            "id_prefix=2024",
            "--set",
            "formats=[parquet, webdataset]",
            "--set",
            "files_per_unit=null",
            "--set",
            "follow_links=true",
        ]
    )
    with pytest.raises(cli.ConfigError, match="files_per_unit=None"):  # null is passed, not dropped
        cli.tokenize_config(args)
    args.settings.remove("files_per_unit=null")
    config = cli.tokenize_config(args)
    assert config.audit_seed == 0 and config.glob == "*.wav" and config.follow_links
    assert config.formats == ("parquet", "webdataset") and config.files_per_unit == 7
    assert config.id_prefix == "2024"  # not valid YAML for a string field: kept as given


def test_config_file_errors(capsys, tmp_path: Path) -> None:
    cases = {
        "list.yaml": ("- a\n", "expected a mapping of config fields, got list"),
        "unknown.yaml": ("input: x\nnum_encoder: 3\n", "unknown config field 'num_encoder'"),
        "type.yaml": ("input: x\nfiles_per_unit: many\n", "files_per_unit='many': must be an integer"),
        "broken.yaml": ("input: [1\n", "not valid YAML"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        code, line = run(capsys, "tokenize", "--config", str(tmp_path / name))
        assert code == 2 and expected in line, line
    code, line = run(capsys, "tokenize", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "config file" in line and "not found" in line


def test_urls_and_inputs_are_checked_first(capsys, demo: Path, tmp_path: Path) -> None:
    code, line = run(capsys, "tokenize", "foo://bucket/in", "--out", str(tmp_path / "o"), *TINY)
    assert code == 2 and "unknown URL scheme 'foo'" in line and "supported: file, s3" in line
    code, line = run(capsys, "tokenize", str(demo), "--out", "zz://o", *TINY)
    assert code == 2 and "'zz' in --out" in line
    code, line = run(capsys, "status", "nope://x")
    assert code == 2 and "unknown URL scheme 'nope'" in line
    missing = str(tmp_path / "missing")
    code, line = run(capsys, "tokenize", missing, "--out", str(tmp_path / "o"), *TINY)
    assert (code, line) == (2, f"semtok: input not found: {missing}")
    code, line = run(capsys, "plan", missing)
    assert (code, line) == (2, f"semtok: input not found: {missing}")


def test_weights_are_checked_before_the_cluster(capsys, demo: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "o")
    code, line = run(capsys, "tokenize", str(demo), "--out", out, "--weights", str(tmp_path / "none"))
    assert code == 2 and line.startswith("semtok: weights error: ") and "does not exist" in line
    folder = tmp_path / "ckpt"
    write_checkpoint_folder(folder, vocab=16384, size="tiny")
    (folder / "encoder.ckpt").write_bytes(b"not a checkpoint")
    from codec.registry import CodecSpec, WeightsError, check_weights

    spec = CodecSpec("semanticodec", {"weights": str(folder), "size": "tiny"})
    with pytest.raises(WeightsError, match="encoder.ckpt: cannot be read as a PyTorch checkpoint"):
        check_weights(spec)
    assert "weights_only=False" not in str(pytest.raises(WeightsError, check_weights, spec).value)
    write_checkpoint_folder(folder, vocab=16384, size="tiny")
    check_weights(spec)  # a good copy passes
    with pytest.raises(WeightsError, match="no decoder file"):
        check_weights(spec, components=("encoder", "decoder"))
    check_weights(CodecSpec("semanticodec", {"weights": "random:0", "size": "tiny"}))


def test_hub_unreachable_fails_fast(demo: Path, tmp_path: Path) -> None:
    """The hub cannot be reached here (and HF_HUB_OFFLINE makes sure): one line, in seconds."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SEMTOK_CACHE": str(tmp_path / "cache"),
        "HF_HOME": str(tmp_path / "hf"),
    }
    started = time.monotonic()
    for args in (
        ["tokenize", str(demo), "--out", str(tmp_path / "o")],
        ["plan", str(demo), "--out", str(tmp_path / "o"), "--weights", "hub"],
    ):
        proc = run_cli(*args, env=env, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (
            "semtok: weights error: cannot reach the model hub for weights=hub; "
            "pass --weights FOLDER_OR_URL (a copy of the official checkpoints)"
        )
    assert time.monotonic() - started < 100
    # plan needs no weights without --out, or with --version
    for args in (["plan", str(demo)], ["plan", str(demo), "--out", str(tmp_path / "o"), "--version", "v1"]):
        proc = run_cli(*args, "--json", env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr


def test_storage_and_unexpected_errors(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(error: BaseException):
        def dispatch(args):
            raise error

        monkeypatch.setattr(cli, "_dispatch", dispatch)

    fail(OSError(errno.ENOSPC, "No space left on device"))
    code, line = run(capsys, "status", "x")
    assert (code, line) == (1, "semtok: storage error: OSError: [Errno 28] No space left on device")
    fail(PermissionError(errno.EACCES, "Permission denied: s3://b/k?X-Amz-Signature=abc secret_key=xyz"))
    code, line = run(capsys, "status", "x")
    assert code == 1 and line.startswith("semtok: storage error: PermissionError:")
    assert "abc" not in line and "xyz" not in line
    fail(KeyError("boom"))
    code, line = run(capsys, "status", "x")
    assert code == 1 and line == "semtok: error: KeyError: 'boom'; rerun with -v for the traceback"
    assert cli.main(["-v", "status", "x"]) == 1
    assert "Traceback" in capsys.readouterr().err
    fail(Interrupted(signal.SIGINT))
    code, line = run(capsys, "status", "x")
    assert (code, line) == (130, "semtok: interrupted (SIGINT); the output is consistent, rerun to resume")


def test_a_real_signal_in_process(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = signal.getsignal(signal.SIGTERM)

    def dispatch(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        raise AssertionError("the signal did not arrive")

    monkeypatch.setattr(cli, "_dispatch", dispatch)
    code, line = run(capsys, "status", "x")
    assert (code, line) == (143, "semtok: interrupted (SIGTERM); the output is consistent, rerun to resume")
    assert signal.getsignal(signal.SIGTERM) is previous  # main() restores the handlers


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_tokenize(tmp_path: Path, signum: int, status: int) -> None:
    write_demo_corpus(tmp_path / "in")
    args = ["tokenize", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--files-per-unit", "1", *TINY]
    env = {**os.environ, "RAY_ADDRESS": "", "SEMTOK_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", *args],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("[semtok]") and "units to do" in line:  # planned; Ray starting
                break
        proc.send_signal(signum)
        rest = proc.communicate(timeout=180)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    stderr = "".join(seen) + rest
    name = signal.Signals(signum).name
    assert proc.returncode == status, stderr[-3000:]
    assert f"semtok: interrupted ({name}); the output is consistent, rerun to resume" in stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    # The stopped run left its record, saying how it ended; the same command then finishes the job.
    import json

    records = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*/runs/*.json")]
    assert [r["status"] for r in records] == ["interrupted"], records
    assert records[0]["error"] == name
    rerun = run_cli(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    check = run_cli("verify", str(tmp_path / "out"), "--input", str(tmp_path / "in"), env=env)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]


def test_the_cli_runs_without_the_audit_extra(tmp_path: Path) -> None:
    """`pip install -e .` (the README's first command) has no matplotlib or scipy: every command
    but the audit works, and the audit says in one line what to install."""
    hide = "import sys; sys.modules.update(matplotlib=None, scipy=None); from jobs.cli import main; "

    def semtok(*args: str) -> subprocess.CompletedProcess[str]:
        code = hide + f"sys.exit(main({list(args)!r}))"
        return subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
        )

    made = semtok("demo-corpus", str(tmp_path / "demo"))
    assert made.returncode == 0, made.stderr
    assert any((tmp_path / "demo").iterdir())
    audit = semtok("audit", str(tmp_path / "tokens"))
    assert audit.returncode != 0
    lines = audit.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install -e ".[audit]"' in lines[0], audit.stderr
