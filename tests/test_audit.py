"""The audit end to end on real Ray, the tiny codec with random weights and few DDIM steps.

A manifest corpus of three sources and three domains is tokenized once; audits of it must account
for every sampled item exactly once, pick the same items (and make the same sounds) on a rerun,
say why an item could not be audited, and write a report that opens in headless Chromium with
every player and image loaded and no console errors.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from jobs.cli import main as cli
from pipeline.audit.diff import diff_audits, load_audit
from pipeline.audit.job import AuditConfig, AuditResult, run_audit
from pipeline.config import ConfigError, TokenizeConfig
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.manifest import load_tokens
from pipeline.io.storage import open_filesystem
from pipeline.tokenize.job import run_tokenize
from tests.browser import check_page, chromium_path
from tests.corpus import speech_like
from tests.helpers import TINY_CODEC as TINY
from tests.helpers import TINY_FLAGS

STEPS = 4  # a valid DDIM step count (3 is not, in the official uniform rule): fast on the tiny codec
SOURCES = {"libri": "speech", "jamendo": "music", "freesound": "sound"}


def _chord(seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    rng = np.random.default_rng(seed)
    notes = 220.0 * 2 ** (rng.integers(0, 12, size=3) / 12)
    return (0.15 * sum(np.sin(2 * np.pi * f * t) for f in notes)).astype(np.float32)


def _noise_burst(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(seconds * 16000)) * np.exp(-np.linspace(0, 6, int(seconds * 16000)))
    return (0.3 * x).astype(np.float32)


def write_manifest_corpus(root: Path) -> Path:
    """Manifest rows carry `source` and `domain` (one as an alias: "song")."""
    rows = []
    plan = [("libri", f"s{i}", speech_like(3.0 + 3 * i, 16000, seed=i)) for i in range(4)]  # up to 12 s
    plan += [("jamendo", f"m{i}", _chord(4.0, i)) for i in range(3)]
    plan += [("freesound", "f0", _noise_burst(2.5, 9))]
    for source, name, audio in plan:
        path = root / "audio" / source / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, 16000, subtype="PCM_16")
        domain = "song" if name == "m2" else SOURCES[source]
        rows.append(
            {
                "id": f"{source}-{name}",
                "audio": f"audio/{source}/{name}.wav",
                "source": source,
                "domain": domain,
            }
        )
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@dataclass
class Tokenized:
    manifest: Path
    output: str
    version: str


@pytest.fixture(scope="module")
def tokenized(ray_local, tmp_path_factory) -> Tokenized:
    root = tmp_path_factory.mktemp("audit-corpus")
    manifest = write_manifest_corpus(root)
    output = str(root / "out")
    run_tokenize(
        TokenizeConfig(
            input=str(manifest),
            output=output,
            files_per_unit=3,
            encode_batch_segments=4,
            progress_interval_s=60,
            **TINY,
        )
    )
    (version,) = [p.name for p in (root / "out").iterdir() if p.is_dir()]
    return Tokenized(manifest, output, version)


def _audit(tokenized: Tokenized, tmp: Path, name: str, **options) -> tuple[AuditResult, dict]:
    config = AuditConfig(
        output=tokenized.output,
        sample=6,
        seed=3,
        steps=STEPS,
        worst_k=2,
        random_k=2,
        report=str(tmp / name),
        **options,
    )
    result = run_audit(config)
    return result, json.loads(Path(result.json_url).read_text())


@pytest.fixture(scope="module")
def first_audit(tokenized, tmp_path_factory) -> tuple[AuditResult, dict]:
    return _audit(tokenized, tmp_path_factory.mktemp("audit-a"), "report")


def test_every_sampled_item_is_accounted_for_once(tokenized, first_audit) -> None:
    result, document = first_audit
    fs, _ = open_filesystem(tokenized.output)
    tokens = load_tokens(fs, OutputLayout(tokenized.output, tokenized.version), columns=["id"])
    ids = [item["id"] for item in document["items"]]
    assert len(ids) == len(set(ids)) == 6 == result.sampled
    assert set(ids) <= set(tokens.column("id").to_pylist())
    assert result.failed == 0 and result.scored == 6
    assert document["population"]["items"] == tokens.num_rows == 8


def test_sample_is_stratified_and_domains_come_from_metadata(first_audit) -> None:
    _, document = first_audit
    assert {item["source"] for item in document["items"]} == set(SOURCES)
    for item in document["items"]:
        assert item["domain"] == SOURCES[item["source"]]  # "song" is read as music
        if item["domain"] == "speech":
            assert "stoi" in item["scores"] or "stoi" in item["not_applicable"]
        else:  # speech-only metrics are not applicable, with the reason, never a number
            for metric in ("pesq_wb", "stoi", "estoi"):
                assert metric not in item["scores"]
                assert "speech" in item["not_applicable"][metric]
        for metric in ("si_sdr", "log_mel_distance", "mrstft_distance"):
            assert np.isfinite(item["scores"][metric])


def test_items_are_cut_to_the_audited_length(first_audit) -> None:
    _, document = first_audit
    for item in document["items"]:
        assert item["audited_seconds"] == pytest.approx(min(item["duration_s"], 10.24), abs=1e-3)
        assert item["decode_seconds"] > 0


def test_report_files_and_random_weights_warning(first_audit) -> None:
    result, document = first_audit
    page = Path(result.html_url).read_text()
    assert "RANDOM WEIGHTS" in page and document["random_weights"] is True
    shown = document["examples"]["worst"] + document["examples"]["random"]
    assert 2 <= len(set(shown)) <= 4
    for item_id in set(shown):
        for path in document["examples"]["files"][item_id].values():
            assert (Path(result.report_url) / path).stat().st_size > 100
    assert document["timing"]["decode_seconds_per_item"] > 0
    stats = document["token_stats"]
    assert set(stats["groups"]) == set(SOURCES)
    assert stats["overall"]["n_items"] == 8


@pytest.mark.skipif(chromium_path() is None, reason="Debian chromium not installed (.ci/run installs it)")
def test_report_opens_in_headless_chromium(first_audit, tmp_path: Path) -> None:
    result, document = first_audit
    check = check_page(Path(result.html_url), screenshot=tmp_path / "report.png")
    assert check.page_errors == [] and check.console_errors == []
    examples = len(document["examples"]["files"])
    shown = len(document["examples"]["worst"]) + len(document["examples"]["random"])
    assert len(check.audio) == 2 * shown and check.broken_audio == []
    assert len(check.images) == 2 * shown + len(document["plots"]) and check.broken_images == []
    assert all(a["duration"] > 0.4 for a in check.audio)
    # A preload="metadata" player may abort its request once it has the header; nothing else fails.
    assert [r for r in check.failed_requests if "ERR_ABORTED" not in r] == []
    assert examples >= 2 and "RANDOM WEIGHTS" in check.text
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_a_rerun_audits_the_same_items_with_the_same_sound(tokenized, first_audit, tmp_path) -> None:
    _, first = first_audit
    _, again = _audit(tokenized, tmp_path, "again")
    assert [i["id"] for i in again["items"]] == [i["id"] for i in first["items"]]
    assert [i["decode_seed"] for i in again["items"]] == [i["decode_seed"] for i in first["items"]]
    for a, b in zip(first["items"], again["items"], strict=True):
        assert b["scores"]["log_mel_distance"] == pytest.approx(a["scores"]["log_mel_distance"], rel=1e-3)
    diff = diff_audits(first, again)
    assert diff.regressions == []
    assert all(s.paired_items >= 2 or s.verdict in ("n/a", "unchanged") for s in diff.shifts)
    other = run_audit(
        AuditConfig(
            output=tokenized.output,
            sample=6,
            seed=4,
            steps=STEPS,
            worst_k=0,
            random_k=0,
            report=str(tmp_path / "other-seed"),
        )
    )
    assert other.sampled == 6


def test_changed_and_missing_originals_are_reported_not_fatal(tokenized, first_audit, tmp_path) -> None:
    _, first = first_audit
    corpus = tmp_path / "corpus"
    shutil.copytree(tokenized.manifest.parent, corpus)
    changed, missing = first["items"][0]["id"], first["items"][-1]["id"]
    lines = (corpus / "manifest.jsonl").read_text().splitlines()
    rows = {json.loads(line)["id"]: json.loads(line) for line in lines}
    sf.write(corpus / rows[changed]["audio"], np.zeros(8000, np.float32), 16000)
    (corpus / rows[missing]["audio"]).unlink()
    # The tokenize record says where the originals were; point a copy of the output at the edited corpus.
    output = tmp_path / "out"
    shutil.copytree(tokenized.output, output)
    version = output / tokenized.version
    for record in (version / "runs").glob("*.json"):
        data = json.loads(record.read_text())
        data["config"]["input"] = str(corpus / "manifest.jsonl")
        record.write_text(json.dumps(data))
    for entry_path in (version / "_manifest").glob("*.json"):
        entry = json.loads(entry_path.read_text())
        info = entry["unit_info"]
        info["uris"] = [u.replace(str(tokenized.manifest.parent), str(corpus)) for u in info["uris"]]
        if info.get("root"):
            info["root"] = info["root"].replace(str(tokenized.manifest.parent), str(corpus))
        entry_path.write_text(json.dumps(entry))
    result = run_audit(
        AuditConfig(
            output=str(output),
            sample=6,
            seed=3,
            steps=STEPS,
            worst_k=1,
            random_k=1,
            report=str(tmp_path / "report"),
        )
    )
    document = json.loads(Path(result.json_url).read_text())
    errors = {i["id"]: i["error"] for i in document["items"] if i["error"]}
    assert errors[changed]["reason"] == "original_changed"
    assert errors[missing]["reason"] == "original_unreadable"
    assert result.failed == 2 and result.scored == 4 and len(document["items"]) == 6
    assert "could not be audited (2)" in Path(result.html_url).read_text()


def test_cli_audit_and_audit_diff(tokenized, first_audit, tmp_path, capsys) -> None:
    result, _ = first_audit
    assert cli(["audit", tokenized.output, "--sample", "3", "--seed", "3", "--steps", "3"]) == 2  # invalid
    assert "steps=3" in capsys.readouterr().err
    code = cli(
        [
            "audit",
            tokenized.output,
            "--sample",
            "2",
            "--seed",
            "1",
            "--steps",
            str(STEPS),
            "--domain",
            "speech",
            "--worst-k",
            "1",
            "--random-k",
            "1",
        ]
    )
    assert code == 0
    html_url = capsys.readouterr().out.strip().splitlines()[-1]
    assert html_url.startswith(f"{tokenized.output}/{tokenized.version}/audits/") and Path(html_url).exists()
    code = cli(
        [
            "audit-diff",
            result.report_url,
            str(Path(html_url).parent),
            "--out",
            str(tmp_path / "diff"),
            "--fail-on-regression",
        ]
    )
    out = capsys.readouterr().out
    assert "visqol" in out and "regression(s)" in out
    assert code in (0, 1) and (tmp_path / "diff" / "index.html").exists()
    assert load_audit(str(Path(html_url).parent))["config"]["sample"] == 2


def test_tokenize_can_audit_what_it_wrote(ray_local, tmp_path) -> None:
    manifest = write_manifest_corpus(tmp_path / "in")
    code = cli(
        [
            "tokenize",
            str(manifest),
            "--out",
            str(tmp_path / "out"),
            *TINY_FLAGS,
            "--audit-sample",
            "2",
            "--audit-steps",
            str(STEPS),
            "--set",
            "progress_interval_s=60",
        ]
    )
    assert code == 0
    (audit_json,) = (tmp_path / "out").glob("*/audits/*/audit.json")
    document = json.loads(audit_json.read_text())
    assert len(document["items"]) == 2 and document["config"]["steps"] == STEPS


def test_audit_config_is_checked(tokenized) -> None:
    with pytest.raises(ConfigError, match="sample or fraction"):
        AuditConfig(output=tokenized.output, sample=3, fraction=0.5)
    with pytest.raises(ConfigError, match="rank_metric"):
        AuditConfig(output=tokenized.output, metrics=("si_sdr",))
    with pytest.raises(FileNotFoundError, match="no dataset version"):
        run_audit(AuditConfig(output=str(Path(tokenized.output) / "nowhere")))


def test_audit_reads_and_writes_s3(ray_local, s3_server, tmp_path) -> None:
    """Originals, tokens and the report all in a bucket: the report is a static site there."""
    bucket = s3_server.make_bucket("semtok-audit")
    fs = s3_server.filesystem()
    local = tmp_path / "in"
    write_manifest_corpus(local)
    for path in local.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"{bucket}/in/{path.relative_to(local)}", path.read_bytes())
    options = s3_server.storage_options
    run_tokenize(
        TokenizeConfig(
            input=f"{bucket}/in/manifest.jsonl",
            output=f"{bucket}/out",
            storage_options=options,
            progress_interval_s=60,
            **TINY,
        )
    )
    result = run_audit(
        AuditConfig(
            output=f"{bucket}/out",
            sample=3,
            seed=0,
            steps=STEPS,
            worst_k=1,
            random_k=1,
            storage_options=options,
        )
    )
    assert result.html_url.startswith(f"{bucket}/out/") and result.scored == 3
    document = json.loads(fs.cat_file(result.json_url))
    for files in document["examples"]["files"].values():
        for rel in files.values():
            assert fs.exists(f"{result.report_url}/{rel}")
    assert b"<audio" in fs.cat_file(result.html_url)


def test_scan_as_ray_tasks_equals_the_scan_on_the_driver(tokenized, monkeypatch) -> None:
    """Large outputs are scanned by Ray tasks of SCAN_UNITS_PER_TASK units; the merge must be exact."""
    import pipeline.audit.job as audit
    from pipeline.dataset.manifest import read_manifest

    fs, _ = open_filesystem(tokenized.output)
    layout = OutputLayout(tokenized.output, tokenized.version)
    manifest = read_manifest(fs, layout)
    assert len(manifest) == 3  # 8 rows, 3 per unit

    def scan():
        return audit._scan_output(tokenized.output, {}, layout, manifest, (16384, 8192), "sound")

    on_driver = scan()
    monkeypatch.setattr(audit, "SCAN_UNITS_PER_TASK", 1)
    as_tasks = scan()

    def by_id(scan_result):
        return sorted(scan_result.candidates, key=lambda c: c.item_id)

    assert by_id(as_tasks) == by_id(on_driver) and len(on_driver.candidates) == 8
    assert as_tasks.token_stats.summary(include_histograms=True) == on_driver.token_stats.summary(
        include_histograms=True
    )
    assert as_tasks.items_by_source == on_driver.items_by_source == {"libri": 4, "jamendo": 3, "freesound": 1}
    assert as_tasks.token_files == on_driver.token_files


def test_decoder_pool_fits_the_cluster() -> None:
    from pipeline.audit.job import plan_decoders

    config = AuditConfig(output="unused")
    cpu = plan_decoders(config, {"CPU": 2.0})
    assert (cpu.device, cpu.count, cpu.cpus, cpu.gpus) == ("cpu", 1, 1.0, 0.0)  # a CPU left to read and score
    gpu = plan_decoders(config, {"CPU": 32.0, "GPU": 4.0})
    assert (gpu.device, gpu.count, gpu.gpus) == ("cuda", 4, 1.0)
    with pytest.raises(ConfigError, match="reading originals"):  # would starve the readers: a hang
        plan_decoders(AuditConfig(output="unused", cpus_per_decoder=2.0), {"CPU": 2.0})
    with pytest.raises(ConfigError, match="GPU"):
        plan_decoders(AuditConfig(output="unused", device="cuda"), {"CPU": 2.0})
