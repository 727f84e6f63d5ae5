"""The audit report: statistics, WAV encoding, an escaped page with its charts inside, reference figures."""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from pipeline.audit.reference_figures import ReferenceFigure, load_reference_figures
from pipeline.audit.report import (
    HTML_NAME,
    JSON_NAME,
    SAMPLE_RATE,
    AuditMedia,
    ExampleAudio,
    metric_stats,
    render_html,
    summarize,
    wav_bytes,
    write_report,
)
from pipeline.audit.token_stats import TokenStats

EVIL = "<script>alert(1)</script>\"'"
EVIL_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;"  # as the autoescaping template writes it
METRICS = ["visqol", "pesq_wb", "log_mel_distance", "loudness_diff_db"]


# --- a realistic audit document ------------------------------------------------------------------


def _item(item_id: str, source: str, domain: str, seed: int, *, error: dict | None = None) -> dict:
    rng = np.random.default_rng(seed)
    scores = (
        {}
        if error
        else {
            "visqol": float(rng.uniform(2, 4.5)),
            "log_mel_distance": float(rng.uniform(0.3, 1.2)),
            "loudness_diff_db": float(rng.uniform(-3, 3)),
        }
    )
    not_applicable = {}
    if not error:
        if domain == "speech":
            scores["pesq_wb"] = float(rng.uniform(1.5, 4.0))
        else:
            not_applicable["pesq_wb"] = f"speech only ({domain})"
    return {
        "id": item_id,
        "unit_id": f"{source}-unit-0",
        "source": source,
        "domain": domain,
        "duration_s": 6.5,
        "audited_seconds": 0.0 if error else 6.5,
        "n_frames": 325,
        "decode_seed": 1000 + seed,
        "decode_seconds": 0.0 if error else 2.5,
        "score_seconds": 0.0 if error else 0.4,
        "scores": scores,
        "not_applicable": not_applicable,
        "error": error,
    }


def _token_stats() -> TokenStats:
    rng = np.random.default_rng(0)
    stats = TokenStats((16384, 8192))
    for i, source in enumerate(["libri", "music", "libri", EVIL]):
        frames = 50 * (i + 2)
        stats.add(
            rng.integers(0, 16384, frames),
            rng.integers(0, 8192, frames),
            duration_s=frames / 50,
            group=source,
        )
    return stats


def make_document(*, random_weights: bool = False, references: list[dict] | None = None) -> dict:
    items = [_item(f"libri/a/{i}.flac", "libri", "speech", i) for i in range(4)]
    items += [_item(f"music/b/{i}.mp3", "music", "music", 10 + i) for i in range(3)]
    items.append(_item(EVIL, EVIL, "sound", 20))
    items.append(
        _item(
            "libri/a/broken.flac",
            "libri",
            "speech",
            30,
            error={"stage": "decode", "reason": "bad_tokens", "detail": "x" * 500},
        )
    )
    stats = _token_stats()
    return {
        "format": "semtok-audit/1",
        "audit_id": "20240101T000000Z-n9-seed0-abcdef",
        "started_at": "2024-01-01T00:00:00Z",
        "finished_at": "2024-01-01T00:05:00Z",
        "dataset_version": "semanticodec-50tps-abc123",
        "output": "/data/out/semanticodec-50tps-abc123",
        "random_weights": random_weights,
        "fingerprint": {
            "codec": "semanticodec",
            "token_rate": 50,
            "semantic_vocab_size": 16384,
            "acoustic_vocab_size": 8192,
            "size": "base",
            "weights": "hf://x/y",
            "random_weights": random_weights,
        },
        "tokenize_config": {"input": "/data/in", "output": "/data/out"},
        "config": {
            "output": "/data/out",
            "metrics": list(METRICS),
            "seed": 0,
            "steps": 50,
            "guidance": 2.0,
            "max_item_seconds": 10.24,
            "decode_dtype": "float32",
            "rank_metric": "visqol",
            "worst_k": 2,
            "random_k": 2,
        },
        "population": {
            "items": 1234,
            "items_by_source": {"libri": 1000, "music": 200, EVIL: 34},
            "errors_by_source": {"libri": {"decode_failed": 3, "too_long": 1}},
        },
        "items": items,
        "token_stats": stats.summary(),
        "token_histograms": {name: stats.histogram(name).tolist() for name in stats.codebooks},
        "token_histograms_by_source": {
            str(g): {name: stats.histogram(name, g).tolist() for name in stats.codebooks}
            for g in stats.groups
        },
        "references": references or [],
        "timing": {
            "wall_seconds": 300.0,
            "decode_seconds_per_item": 2.5,
            "decode_seconds_per_audio_second": 0.38,
            "decoders": {"count": 1, "device": "cpu", "cpus": 4.0, "gpus": 0.0},
        },
    }


def _sine(freq: float, seconds: float = 0.5, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _media(worst: list[str], random_ids: list[str]) -> AuditMedia:
    examples = {}
    for k, item_id in enumerate(dict.fromkeys([*worst, *random_ids])):
        examples[item_id] = ExampleAudio(_sine(220.0 * (k + 1)), _sine(220.0 * (k + 1), amplitude=0.4))
    return AuditMedia(examples=examples, worst_ids=worst, random_ids=random_ids)


def _rendered(document: dict) -> str:
    """The page of a document as write_report would fill it, without writing files."""
    document = copy.deepcopy(document)
    document["summary"] = summarize(document["items"], document["config"]["metrics"])
    document["examples"] = {"worst": [], "random": [], "files": {}}
    document["plots"] = []
    return render_html(document, charts={})  # text only: the charts have their own tests


# --- metric_stats / summarize --------------------------------------------------------------------


def test_metric_stats_known_values():
    stats = metric_stats([1.0, 2.0, 3.0, 4.0])
    assert stats["n"] == 4
    assert stats["mean"] == pytest.approx(2.5)
    assert stats["median"] == pytest.approx(2.5)
    assert stats["min"] == 1.0 and stats["max"] == 4.0
    assert stats["p10"] == pytest.approx(1.3)
    assert stats["p90"] == pytest.approx(3.7)
    assert all(isinstance(stats[k], float) for k in ("mean", "median", "p10", "p90", "min", "max"))
    assert isinstance(stats["n"], int)


def test_metric_stats_ignores_non_finite_and_none():
    stats = metric_stats([1.0, math.nan, 3.0, math.inf, -math.inf, None])
    assert stats["n"] == 2
    assert stats["mean"] == pytest.approx(2.0)
    assert stats["min"] == 1.0 and stats["max"] == 3.0


@pytest.mark.parametrize("values", [[], [math.nan], [None, math.inf]])
def test_metric_stats_empty(values):
    stats = metric_stats(values)
    assert stats == {"n": 0, "mean": None, "median": None, "p10": None, "p90": None, "min": None, "max": None}


def test_summarize_counts():
    document = make_document()
    summary = summarize(document["items"], METRICS)
    overall = summary["overall"]
    assert (overall["sampled"], overall["scored"], overall["failed"]) == (9, 8, 1)
    assert overall["metrics"]["visqol"]["n"] == 8
    assert overall["metrics"]["pesq_wb"]["n"] == 4
    assert overall["metrics"]["pesq_wb"]["not_applicable"] == 4  # 3 music + 1 sound
    assert overall["metrics"]["visqol"]["not_applicable"] == 0
    visqol = [r["scores"]["visqol"] for r in document["items"] if not r["error"]]
    assert overall["metrics"]["visqol"]["mean"] == pytest.approx(float(np.mean(visqol)))

    by_source = summary["by_source"]
    assert list(by_source) == sorted(["libri", "music", EVIL])
    libri = by_source["libri"]
    assert (libri["sampled"], libri["scored"], libri["failed"]) == (5, 4, 1)
    assert libri["metrics"]["pesq_wb"]["n"] == 4
    assert libri["metrics"]["pesq_wb"]["not_applicable"] == 0
    assert by_source["music"]["metrics"]["pesq_wb"]["n"] == 0
    assert by_source["music"]["metrics"]["pesq_wb"]["not_applicable"] == 3
    assert by_source["music"]["metrics"]["pesq_wb"]["median"] is None

    by_domain = summary["by_domain"]
    assert set(by_domain) == {"speech", "music", "sound"}
    assert by_domain["speech"]["failed"] == 1 and by_domain["speech"]["scored"] == 4
    assert by_domain["sound"]["sampled"] == 1
    # groups add up to the whole
    assert sum(b["sampled"] for b in by_source.values()) == overall["sampled"]
    assert sum(b["metrics"]["visqol"]["n"] for b in by_domain.values()) == overall["metrics"]["visqol"]["n"]


def test_summarize_empty():
    summary = summarize([], ["visqol"])
    assert summary["overall"]["sampled"] == 0
    assert summary["overall"]["metrics"]["visqol"]["n"] == 0
    assert summary["by_source"] == {} and summary["by_domain"] == {}


# --- wav_bytes -----------------------------------------------------------------------------------


def test_wav_bytes_round_trip():
    samples = _sine(440.0, seconds=0.25)
    data = wav_bytes(samples)
    info = sf.info(io.BytesIO(data))
    assert info.samplerate == SAMPLE_RATE == 16000
    assert info.channels == 1
    assert info.subtype == "PCM_16"
    assert info.format == "WAV"
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 16000
    assert decoded.shape == samples.shape
    np.testing.assert_allclose(decoded, samples, atol=1.0 / 32768 + 1e-7)


def test_wav_bytes_clips_instead_of_wrapping():
    samples = np.array([0.0, 1.5, -1.5, 2.0, -7.0, 0.25, math.nan], dtype=np.float32)
    pcm, _ = sf.read(io.BytesIO(wav_bytes(samples)), dtype="int16")
    assert pcm[1] == 32767 and pcm[3] == 32767
    assert pcm[2] == -32768 and pcm[4] == -32768
    assert pcm[0] == 0 and pcm[6] == 0
    assert pcm[5] == pytest.approx(0.25 * 32768, abs=1)


def test_wav_bytes_other_rate():
    data = wav_bytes(np.zeros(480, dtype=np.float32), sample_rate=48000)
    info = sf.info(io.BytesIO(data))
    assert info.samplerate == 48000 and info.frames == 480


# --- render_html ---------------------------------------------------------------------------------


def test_render_html_escapes_user_text():
    document = make_document()
    document["items"][-1]["error"]["detail"] = "<b>boom</b>"
    page = _rendered(document)
    assert "<script>" not in page
    assert "alert(1)</script>" not in page
    assert EVIL_ESCAPED in page
    assert "&lt;b&gt;boom&lt;/b&gt;" in page
    # every item that could not be audited is listed
    assert "libri/a/broken.flac" in page and "bad_tokens" in page
    assert "Items that could not be audited (1)" in page


def test_render_html_escapes_example_ids_and_sources():
    document = copy.deepcopy(make_document())
    document["summary"] = summarize(document["items"], METRICS)
    files = {
        "original_wav": "media/001-original.wav",
        "reconstruction_wav": "media/001-reconstruction.wav",
        "original_png": "media/001-original.png",
        "reconstruction_png": "media/001-reconstruction.png",
    }
    document["examples"] = {"worst": [EVIL], "random": [], "files": {EVIL: files}}
    document["plots"] = []
    page = render_html(document)
    assert "<script>" not in page
    assert page.count(EVIL_ESCAPED) >= 3  # example, tables
    for path in files.values():
        assert f'src="{path}"' in page


def test_random_weights_banner_only_when_random():
    assert "RANDOM WEIGHTS" not in _rendered(make_document(random_weights=False))
    page = _rendered(make_document(random_weights=True))
    assert "RANDOM WEIGHTS" in page
    # the warning comes before anything else on the page
    assert page.index("RANDOM WEIGHTS") < page.index("<h1>")


def test_reference_lines_text():
    assert "No reference lines" in _rendered(make_document())
    figure = ReferenceFigure(metric="visqol", value=3.2, label="Paper, Table 1", domain="speech")
    page = _rendered(make_document(references=[figure.to_dict()]))
    assert "No reference lines" not in page
    assert "Dashed lines" in page


def test_render_html_summary_content():
    page = _rendered(make_document())
    assert "semanticodec-50tps-abc123" in page
    assert "9 of 1,234 tokenized items" in page
    assert "50 DDIM steps" in page
    for label in ("ViSQOL v3 (MOS-LQO)", "PESQ-WB", "log-mel distance", "loudness difference (dB)"):
        assert label in page
    assert "→0" in page  # loudness: closest to zero is best
    assert page.rstrip().endswith("</html>")


# --- write_report --------------------------------------------------------------------------------


def test_write_report(tmp_path: Path):
    document = make_document(references=[ReferenceFigure("visqol", 3.2, "Paper, Table 1").to_dict()])
    scored = [r["id"] for r in document["items"] if not r["error"]]
    worst, random_ids = [scored[0], EVIL], [scored[3], EVIL]  # one shared: written once
    root = tmp_path / "report"
    html_url, json_url = write_report(str(root), document, _media(worst, random_ids))
    assert html_url == f"{root}/{HTML_NAME}" and json_url == f"{root}/{JSON_NAME}"
    page = (root / HTML_NAME).read_text()
    stored = json.loads((root / JSON_NAME).read_text())

    # every file the page links resolves inside the report folder; the charts are inside the page
    sources = re.findall(r'src="([^"]*)"', page)
    files = [s for s in sources if not s.startswith("data:")]
    assert files
    for src in files:
        assert not src.startswith(("/", "http")), src
        assert (root / src).is_file(), src
    wavs = [s for s in files if s.endswith(".wav")]
    pngs = [s for s in files if s.endswith(".png")]
    assert len(set(wavs)) == 6 and len(set(pngs)) == 6  # three distinct examples, two of each
    assert len(files) == len(wavs) + len(pngs)
    charts = dict(re.findall(r'data-plot="([^"]*)" src="data:image/svg\+xml;base64,([^"]*)"', page))
    assert len(charts) == len(sources) - len(files)
    assert {f"plots/metric-{m}.svg" for m in METRICS} <= set(charts)
    assert {"plots/codebook-semantic.svg", "plots/codebook-acoustic.svg"} <= set(charts)
    for name, encoded in charts.items():
        svg = base64.b64decode(encoded).decode("utf-8")
        assert svg == (root / name).read_text(), name  # the same chart is also a file under plots/
        assert ET.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg"
    for png in pngs:
        with Image.open(root / png) as image:
            assert image.format == "PNG" and image.width > 0 and image.height == 257
    for wav in wavs:
        info = sf.info(str(root / wav))
        assert info.samplerate == SAMPLE_RATE and info.frames == int(0.5 * SAMPLE_RATE)
    assert "<script>" not in page

    # audit.json has every number, and what write_report added
    for key in ("summary", "examples", "plots"):
        assert key in stored
    assert stored["summary"]["overall"]["sampled"] == 9
    assert stored["examples"]["worst"] == worst and stored["examples"]["random"] == random_ids
    assert set(stored["examples"]["files"]) == {scored[0], scored[3], EVIL}
    assert stored["plots"] == sorted(stored["plots"])
    assert set(stored["plots"]) == set(charts)
    assert stored["items"] == document["items"]
    assert stored["token_stats"] == json.loads(json.dumps(document["token_stats"]))
    # the page is a pure function of the document write_report filled in
    assert render_html(document) == page
    # re-rendered from audit.json it links the same files
    assert re.findall(r'src="([^"]*)"', render_html(stored)) == sources


def test_page_rerenders_identically_from_audit_json(tmp_path: Path):
    document = make_document()
    root = tmp_path / "report"
    write_report(str(root), document, AuditMedia())
    stored = json.loads((root / JSON_NAME).read_text())
    assert render_html(stored) == (root / HTML_NAME).read_text()


def test_write_report_without_examples(tmp_path: Path):
    document = make_document()
    root = tmp_path / "empty-report"
    write_report(str(root), document, AuditMedia())
    page = (root / HTML_NAME).read_text()
    assert page.count('<p class="muted">none</p>') == 2  # no worst, no random examples
    assert not (root / "media").exists()
    for src in re.findall(r'src="([^"]*)"', page):
        assert src.startswith("data:image/svg+xml;base64,") or (root / src).is_file(), src


# --- reference figures ---------------------------------------------------------------------------


def test_load_reference_figures_none():
    assert load_reference_figures(None) == []
    assert load_reference_figures(None, {"token_rate": 50}) == []


def test_load_reference_figures_filters_by_token_rate(tmp_path: Path):
    path = tmp_path / "refs.json"
    path.write_text(
        json.dumps(
            [
                {"metric": "visqol", "value": 3.1, "label": "Paper, Table 2 (100 tps)", "token_rate": 100},
                {"metric": "pesq_wb", "value": 2.5, "label": "Paper, Table 3", "domain": "speech"},
            ]
        )
    )
    kept = load_reference_figures(str(path), {"token_rate": 50})
    assert kept == [ReferenceFigure(metric="pesq_wb", value=2.5, label="Paper, Table 3", domain="speech")]
    assert len(load_reference_figures(str(path), {"token_rate": 100})) == 2
    assert len(load_reference_figures(str(path))) == 2  # no fingerprint: no filter
    assert kept[0].to_dict() == {
        "metric": "pesq_wb",
        "value": 2.5,
        "label": "Paper, Table 3",
        "domain": "speech",
        "token_rate": None,
        "semantic_vocab_size": None,
    }


def test_bundled_figures_apply_only_to_their_configuration():
    """The official README's ViSQOL plot covers the 32768-vocabulary configurations only."""
    kept = load_reference_figures(None, {"token_rate": 50, "semantic_vocab_size": 32768})
    assert [(f.metric, f.value) for f in kept] == [("visqol", 3.55)]
    assert "result.png" in kept[0].label and "read off the plot" in kept[0].label
    assert load_reference_figures(None, {"token_rate": 50, "semantic_vocab_size": 16384}) == []
    rate_100 = load_reference_figures(None, {"token_rate": 100, "semantic_vocab_size": 32768})
    assert [f.value for f in rate_100] == [3.81]
    # figures rise with the bitrate, as on the plot
    values = [
        load_reference_figures(None, {"token_rate": r, "semantic_vocab_size": 32768})[0].value
        for r in (25, 50, 100)
    ]
    assert values == sorted(values)


@pytest.mark.parametrize(
    "entry",
    [
        {"metric": "visqol", "value": 3.1},  # no label
        {"metric": "visqol", "value": 3.1, "label": "   "},  # blank label
        {"metric": "not_a_metric", "value": 3.1, "label": "Paper"},
        {"metric": "visqol", "value": 3.1, "label": "Paper", "domain": "video"},
    ],
)
def test_load_reference_figures_rejects_bad_entries(tmp_path: Path, entry):
    path = tmp_path / "refs.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises(ValueError):
        load_reference_figures(str(path))


def test_load_reference_figures_rejects_non_list(tmp_path: Path):
    path = tmp_path / "refs.json"
    path.write_text(json.dumps({"metric": "visqol", "value": 3.1, "label": "x"}))
    with pytest.raises(ValueError, match="JSON list"):
        load_reference_figures(str(path))
    path.write_text(json.dumps(["visqol"]))
    with pytest.raises(ValueError, match="object"):
        load_reference_figures(str(path))
