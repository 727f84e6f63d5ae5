"""The audit's report: audit.json with every number, and a static HTML page people can see and hear.

The page needs no server and no script: it opens from a local folder or a bucket. Its charts
(matplotlib SVG) are inside the page; its WAV files and spectrogram PNGs sit next to it under media/
(relative links: inlining the sound would make the page megabytes). The charts are also written
as files under plots/, the names audit.json lists. The HTML comes from the Jinja2 template
templates/report.html.j2. When the tokens were made with random weights the page says so before
anything else.
"""

from __future__ import annotations

import functools
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from pipeline.audit.plots import Reference, histogram_svg, rank_frequency_svg, spectrogram_png, svg_data_uri
from pipeline.audit.quality_metrics import HIGHER_IS_BETTER, SAMPLE_RATE, ZERO_IS_BEST
from pipeline.audit.token_stats import CODEBOOKS
from pipeline.dataset.layout import publish
from pipeline.io.storage import open_filesystem, with_retries

HTML_NAME = "index.html"
JSON_NAME = "audit.json"

METRIC_LABELS: dict[str, str] = {
    "visqol": "ViSQOL v3 (MOS-LQO)",
    "pesq_wb": "PESQ-WB",
    "stoi": "STOI",
    "estoi": "ESTOI",
    "si_sdr": "SI-SDR (dB, aligned, capped)",
    "log_mel_distance": "log-mel distance",
    "mrstft_distance": "multi-resolution STFT distance",
    "loudness_diff_db": "loudness difference (dB)",
}
METRIC_NOTES: dict[str, str] = {
    "visqol": "speech mode at 16 kHz for speech; audio mode at 48 kHz (resampled) for music and sound",
    "pesq_wb": "ITU-T P.862.2 wide band; speech only",
    "stoi": "speech only",
    "estoi": "extended STOI; speech only",
    "si_sdr": "after aligning the reconstruction (up to 100 ms); phase-sensitive, so low for any "
    "generative decoder",
    "log_mel_distance": "mean absolute log-mel difference",
    "mrstft_distance": "spectral convergence + log magnitude over several FFT sizes",
    "loudness_diff_db": "integrated loudness of the reconstruction minus the original (ITU-R BS.1770); "
    "0 is best",
}


@dataclass
class ExampleAudio:
    reference: np.ndarray  # float32 mono 16 kHz
    reconstruction: np.ndarray


@dataclass
class AuditMedia:
    examples: dict[str, ExampleAudio] = field(default_factory=dict)
    worst_ids: list[str] = field(default_factory=list)
    random_ids: list[str] = field(default_factory=list)


# --- numbers ------------------------------------------------------------------------------------


def metric_stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, median, p10, p90, min, max of finite values (None figures when there are none)."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"n": 0, "mean": None, "median": None, "p10": None, "p90": None, "min": None, "max": None}
    return {
        "n": int(finite.size),
        "mean": float(finite.mean()),
        "median": float(np.median(finite)),
        "p10": float(np.percentile(finite, 10)),
        "p90": float(np.percentile(finite, 90)),
        "min": float(finite.min()),
        "max": float(finite.max()),
    }


def summarize(items: Iterable[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """Per-metric statistics overall, per source and per domain, plus counts of what was scored,
    not applicable, or could not be audited."""
    items = list(items)

    def block(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
        scored = [r for r in rows if not r.get("error")]
        return {
            "sampled": len(rows),
            "scored": len(scored),
            "failed": len(rows) - len(scored),
            "metrics": {
                m: {
                    **metric_stats([r["scores"][m] for r in scored if m in r["scores"]]),
                    "not_applicable": sum(1 for r in scored if m in r.get("not_applicable", {})),
                }
                for m in metrics
            },
        }

    def grouped(key: str) -> dict[str, Any]:
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for row in items:
            groups.setdefault(str(row[key]), []).append(row)
        return {name: block(rows) for name, rows in sorted(groups.items())}

    return {"overall": block(items), "by_source": grouped("source"), "by_domain": grouped("domain")}


# --- files --------------------------------------------------------------------------------------


def wav_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV (plays in every browser); samples beyond full scale are clipped, not wrapped."""
    buffer = io.BytesIO()
    clipped = np.clip(np.nan_to_num(np.asarray(samples, dtype=np.float32)), -1.0, 1.0)
    sf.write(buffer, clipped, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def write_report(
    report_url: str,
    document: dict[str, Any],
    media: AuditMedia,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """Write media, plots, audit.json and index.html under `report_url`; (html url, json url)."""
    fs, root = open_filesystem(report_url, storage_options)
    root = root.rstrip("/")
    base_url = report_url.rstrip("/")
    metrics = list(document["config"]["metrics"])
    document["summary"] = summarize(document["items"], metrics)
    files: dict[str, bytes] = {}
    examples: dict[str, dict[str, str]] = {}
    for number, item_id in enumerate(dict.fromkeys([*media.worst_ids, *media.random_ids]), start=1):
        audio = media.examples[item_id]
        stem = f"media/{number:03d}"
        examples[item_id] = {
            "original_wav": f"{stem}-original.wav",
            "reconstruction_wav": f"{stem}-reconstruction.wav",
            "original_png": f"{stem}-original.png",
            "reconstruction_png": f"{stem}-reconstruction.png",
        }
        files[f"{stem}-original.wav"] = wav_bytes(audio.reference)
        files[f"{stem}-reconstruction.wav"] = wav_bytes(audio.reconstruction)
        files[f"{stem}-original.png"] = spectrogram_png(audio.reference)
        files[f"{stem}-reconstruction.png"] = spectrogram_png(audio.reconstruction)
    document["examples"] = {"worst": media.worst_ids, "random": media.random_ids, "files": examples}
    charts = report_charts(document)
    document["plots"] = sorted(charts)
    files.update({name: svg.encode() for name, svg in charts.items()})
    for folder in {"", *(name.rsplit("/", 1)[0] for name in files if "/" in name)}:
        fs.makedirs(f"{root}/{folder}".rstrip("/"), exist_ok=True)  # local disks; a no-op on buckets
    for name, data in files.items():
        with_retries(functools.partial(fs.pipe_file, f"{root}/{name}", data))
    json_bytes = json.dumps(document, indent=1, sort_keys=True, allow_nan=False).encode()
    with_retries(lambda: publish(fs, f"{root}/{JSON_NAME}", json_bytes))
    page = render_html(document, charts=charts).encode()
    with_retries(lambda: publish(fs, f"{root}/{HTML_NAME}", page))
    return f"{base_url}/{HTML_NAME}", f"{base_url}/{JSON_NAME}"


def report_charts(document: Mapping[str, Any]) -> dict[str, str]:
    """Every chart of the page, name (its file under the report, and its entry in `plots`) → SVG:
    one histogram per metric by domain, one codebook-usage chart per codebook."""
    charts: dict[str, str] = {}
    scored = [r for r in document["items"] if not r.get("error")]
    for metric in document["config"]["metrics"]:
        by_domain: dict[str, list[float]] = {}
        for row in scored:
            if metric in row["scores"]:
                by_domain.setdefault(row["domain"], []).append(float(row["scores"][metric]))
        if not by_domain:
            continue
        references = [
            Reference(
                value=float(r["value"]), label=r["label"] + (f" ({r['domain']})" if r.get("domain") else "")
            )
            for r in document.get("references", [])
            if r["metric"] == metric
        ]
        charts[f"plots/metric-{metric}.svg"] = histogram_svg(
            by_domain,
            title=METRIC_LABELS.get(metric, metric),
            x_label=metric,
            references=references,
            higher_is_better=HIGHER_IS_BETTER.get(metric),
        )
    by_source = document.get("token_histograms_by_source", {})
    for codebook, overall in document.get("token_histograms", {}).items():
        curves = {"all sources": np.asarray(overall, dtype=np.int64)}
        if len(by_source) > 1:
            curves.update(
                {source: np.asarray(h[codebook], dtype=np.int64) for source, h in by_source.items()}
            )
        charts[f"plots/codebook-{codebook}.svg"] = rank_frequency_svg(
            curves, title=f"{codebook} codebook usage (share of frames by code rank)"
        )
    return charts


# --- HTML ---------------------------------------------------------------------------------------

#: The audit's page templates (also the diff page's). Autoescape on for HTML: ids, sources, paths and
#: error details are user text; StrictUndefined: a misspelt field fails the test, not the page.
TEMPLATES = Environment(
    loader=PackageLoader("pipeline.audit", "templates"),
    autoescape=select_autoescape(enabled_extensions=("html", "html.j2")),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _num(value: Any, digits: int = 3) -> str:
    """A table figure: ints with thousands separators, floats to 3 significant digits, – for none."""
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


TEMPLATES.filters["num"] = _num
TEMPLATES.filters["data_uri"] = svg_data_uri


def _direction(metric: str) -> str:
    if metric in ZERO_IS_BEST:
        return " →0"
    better = HIGHER_IS_BETTER.get(metric)
    return "" if better is None else " ↑" if better else " ↓"


def render_html(document: Mapping[str, Any], *, charts: Mapping[str, str] | None = None) -> str:
    """The page: a pure function of the audit document, so it can be re-rendered from audit.json.
    `charts` (name → SVG, from `report_charts`) saves drawing them again when the caller has them."""
    charts = report_charts(document) if charts is None else charts
    config, population = document["config"], document["population"]
    metrics = list(config["metrics"])
    summary = document["summary"]
    stats = document["token_stats"]
    # The codec's stream order (semantic, acoustic), whatever order the JSON round trip left.
    rank = {name: index for index, name in enumerate(CODEBOOKS)}
    examples = document["examples"]
    return TEMPLATES.get_template("report.html.j2").render(
        document=document,
        fp=document["fingerprint"],
        config=config,
        timing=document["timing"],
        decoders=document["timing"].get("decoders", {}),
        population=population,
        summary=summary,
        metrics=metrics,
        labels=METRIC_LABELS,
        notes=METRIC_NOTES,
        arrows={m: _direction(m) for m in metrics},
        items={row["id"]: row for row in document["items"]},
        source_extra={
            name: {
                "tokenized": population["items_by_source"].get(name, 0),
                "failed to tokenize": sum(population["errors_by_source"].get(name, {}).values()),
            }
            for name in summary["by_source"]
        },
        metric_charts=[
            (name, name[len("plots/metric-") : -len(".svg")], svg)
            for name, svg in sorted(charts.items())
            if name.startswith("plots/metric-")
        ],
        codebook_charts=[
            (name, name[len("plots/codebook-") : -len(".svg")], svg)
            for name, svg in sorted(charts.items())
            if name.startswith("plots/codebook-")
        ],
        example_sections=[
            ("Worst items", examples["worst"], f"lowest by {config['rank_metric']}"),
            ("Random items", examples["random"], "a seeded random pick"),
        ],
        example_files=examples["files"],
        books=sorted(stats["vocab_sizes"], key=lambda b: (rank.get(b, len(rank)), b)),
        token_rows=[("all sources", stats["overall"]), *stats["groups"].items()],
        failed=[row for row in document["items"] if row.get("error")],
        json_name=JSON_NAME,
    )
