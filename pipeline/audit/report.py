"""The audit's report: audit.json with every number, and a static HTML page people can see and hear.

The page needs no server and no script: it opens from a local folder or a bucket, with relative
links to its WAV files, spectrogram PNGs and SVG plots. When the tokens were made with random
weights the page says so before anything else.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf

from pipeline.audit.plots import Reference, histogram_svg, rank_frequency_svg, spectrogram_png
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
        files[f"{stem}-original.png"] = spectrogram_png(audio.reference, sample_rate=SAMPLE_RATE)
        files[f"{stem}-reconstruction.png"] = spectrogram_png(audio.reconstruction, sample_rate=SAMPLE_RATE)
    document["examples"] = {"worst": media.worst_ids, "random": media.random_ids, "files": examples}
    plots = _plots(document, metrics)
    document["plots"] = sorted(plots)
    files.update({name: svg.encode() for name, svg in plots.items()})
    for folder in {"", *(name.rsplit("/", 1)[0] for name in files if "/" in name)}:
        fs.makedirs(f"{root}/{folder}".rstrip("/"), exist_ok=True)  # local disks; a no-op on buckets
    for name, data in files.items():
        with_retries(lambda n=name, d=data: fs.pipe_file(f"{root}/{n}", d))
    json_bytes = json.dumps(document, indent=1, sort_keys=True, allow_nan=False).encode()
    with_retries(lambda: publish(fs, f"{root}/{JSON_NAME}", json_bytes))
    page = render_html(document).encode()
    with_retries(lambda: publish(fs, f"{root}/{HTML_NAME}", page))
    return f"{base_url}/{HTML_NAME}", f"{base_url}/{JSON_NAME}"


def _plots(document: Mapping[str, Any], metrics: Sequence[str]) -> dict[str, str]:
    plots: dict[str, str] = {}
    scored = [r for r in document["items"] if not r.get("error")]
    for metric in metrics:
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
        plots[f"plots/metric-{metric}.svg"] = histogram_svg(
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
        plots[f"plots/codebook-{codebook}.svg"] = rank_frequency_svg(
            curves, title=f"{codebook} codebook usage (share of frames by code rank)"
        )
    return plots


# --- HTML ---------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:0 20px 60px;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin:24px 0 4px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.warning{background:#b00020;color:#fff;padding:14px 18px;border-radius:6px;font-size:1.1em;margin:16px 0}
.muted{color:#666}table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}th{background:#f5f5f7}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots img{border:1px solid #eee;max-width:100%}
.example{border:1px solid #ddd;border-radius:6px;padding:10px 12px;margin:12px 0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}.pair img{width:100%;height:160px;
image-rendering:pixelated;border:1px solid #eee}.pair audio{width:100%}code{font-size:.92em}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px}dt{font-weight:600}dd{margin:0}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def _metric_header(metric: str) -> str:
    arrow = {True: " ↑", False: " ↓"}.get(HIGHER_IS_BETTER.get(metric), "")
    arrow = " →0" if metric in ZERO_IS_BEST else arrow
    note, label = _e(METRIC_NOTES.get(metric, "")), _e(METRIC_LABELS.get(metric, metric))
    return f'<th title="{note}">{label}{arrow}</th>'


def _summary_table(
    title: str,
    column: str,
    groups: Mapping[str, Any],
    metrics: Sequence[str],
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    extra_cols = list(next(iter(extra.values())).keys()) if extra else []
    head = "".join(f"<th>{_e(c)}</th>" for c in extra_cols)
    rows = []
    for name, block in groups.items():
        cells = "".join(f"<td>{_num((extra or {}).get(name, {}).get(c, 0))}</td>" for c in extra_cols)
        metric_cells = []
        for metric in metrics:
            stats = block["metrics"][metric]
            if stats["n"]:
                text = f"{_num(stats['median'])} <span class=muted>({stats['n']})</span>"
            elif stats["not_applicable"]:
                text = "<span class=muted>n/a</span>"
            else:
                text = "–"
            metric_cells.append(f"<td>{text}</td>")
        rows.append(
            f"<tr><td>{_e(name)}</td>{cells}<td>{block['sampled']}</td><td>{block['failed']}</td>"
            f"{''.join(metric_cells)}</tr>"
        )
    metric_heads = "".join(_metric_header(m) for m in metrics)
    return (
        f"<h3>{_e(title)}</h3><table><tr><th>{_e(column)}</th>{head}<th>audited</th>"
        f"<th>not auditable</th>{metric_heads}</tr>{''.join(rows)}</table>"
    )


def _scores_line(row: Mapping[str, Any], metrics: Sequence[str]) -> str:
    parts = []
    for metric in metrics:
        if metric in row["scores"]:
            parts.append(f"{_e(metric)} <b>{_num(row['scores'][metric])}</b>")
        elif metric in row.get("not_applicable", {}):
            why = _e(row["not_applicable"][metric])
            parts.append(f'<span class=muted title="{why}">{_e(metric)} n/a</span>')
    return " · ".join(parts)


def _example(row: Mapping[str, Any], files: Mapping[str, str], metrics: Sequence[str]) -> str:
    return (
        f"<div class=example><div><b>{_e(row['id'])}</b> <span class=muted>source {_e(row['source'])} · "
        f"{_e(row['domain'])} · {row['audited_seconds']:.2f} s of {row['duration_s']:.2f} s · decode seed "
        f"{row['decode_seed']}</span></div><div>{_scores_line(row, metrics)}</div><div class=pair>"
        f'<figure><figcaption>original</figcaption><audio controls preload="metadata" '
        f'src="{_e(files["original_wav"])}"></audio><img alt="spectrogram of the original" '
        f'src="{_e(files["original_png"])}"></figure>'
        f'<figure><figcaption>reconstruction</figcaption><audio controls preload="metadata" '
        f'src="{_e(files["reconstruction_wav"])}"></audio><img alt="spectrogram of the reconstruction" '
        f'src="{_e(files["reconstruction_png"])}"></figure></div></div>'
    )


def _token_table(stats: Mapping[str, Any]) -> str:
    # The codec's stream order (semantic, acoustic), whatever order the JSON round trip left.
    rank = {name: index for index, name in enumerate(CODEBOOKS)}
    books = sorted(stats["vocab_sizes"], key=lambda b: (rank.get(b, len(rank)), b))
    head = "".join(
        f"<th>{_e(b)} codes used</th><th>{_e(b)} entropy (bits)</th><th>{_e(b)} perplexity</th>"
        f"<th>{_e(b)} dead codes</th>"
        for b in books
    )

    def line(name: str, part: Mapping[str, Any]) -> str:
        cells = []
        for book in books:
            cb = part["codebooks"][book]
            cells.append(
                f"<td>{cb['used_codes']:,} / {cb['vocab_size']:,}</td>"
                f"<td>{_num(cb['entropy_bits'])}</td><td>{_num(cb['perplexity'])}</td>"
                f"<td>{_num(100 * cb['dead_code_share'])} %</td>"
            )
        return (
            f"<tr><td>{_e(name)}</td><td>{part['n_items']:,}</td>"
            f"<td>{_num(part['duration_s'] / 3600)}</td><td>{_num(part['tokens_per_second'])}</td>"
            f"{''.join(cells)}</tr>"
        )

    rows = [line("all sources", stats["overall"])]
    rows += [line(name, part) for name, part in stats["groups"].items()]
    return (
        f"<table><tr><th>source</th><th>items</th><th>hours</th><th>frames/s</th>{head}</tr>"
        f"{''.join(rows)}</table>"
    )


def _dl(pairs: Iterable[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def render_html(document: Mapping[str, Any]) -> str:
    """The page (a pure function of the audit document, so it can be re-rendered from audit.json)."""
    config, fp, timing = document["config"], document["fingerprint"], document["timing"]
    metrics = list(config["metrics"])
    items = {row["id"]: row for row in document["items"]}
    summary = document["summary"]
    population = document["population"]
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>semtok audit "
        f"{_e(document['dataset_version'])}</title><meta name=viewport content='width=device-width'>"
        f"<style>{_CSS}</style></head><body>"
    ]
    if document["random_weights"]:
        parts.append(
            f"<div class=warning role=alert><b>RANDOM WEIGHTS.</b> This output was tokenized with random "
            f"codec weights (<code>{_e(fp.get('weights'))}</code>). Every score, plot and sound on this page "
            "is meaningless as a measure of quality; the page only shows that the audit runs.</div>"
        )
    parts.append(f"<h1>Token quality audit</h1><p class=muted>{_e(document['output'])}</p>")
    parts.append(
        _dl(
            [
                ("dataset version", f"<code>{_e(document['dataset_version'])}</code>"),
                (
                    "codec",
                    _e(
                        f"{fp.get('codec')} · {fp.get('token_rate')} tokens/s · semantic vocabulary "
                        f"{fp.get('semantic_vocab_size')} · {fp.get('size')} · weights {fp.get('weights')}"
                    ),
                ),
                (
                    "sample",
                    _e(
                        f"{len(items)} of {population['items']:,} tokenized items, stratified by source and "
                        f"shard, seed {config['seed']}"
                    ),
                ),
                (
                    "decoding",
                    _e(
                        f"{config['steps']} DDIM steps, guidance {config['guidance']}, "
                        f"{config['decode_dtype']}, the first {config['max_item_seconds']} s of each item, "
                        f"on {timing.get('decoders', {}).get('count', '?')} "
                        f"{timing.get('decoders', {}).get('device', '')} replica(s)"
                    ),
                ),
                (
                    "cost",
                    _e(
                        f"wall {timing['wall_seconds']:.1f} s; decoding "
                        f"{_num(timing.get('decode_seconds_per_item'))} s per item, "
                        f"{_num(timing.get('decode_seconds_per_audio_second'))} s per audio second"
                    ),
                ),
                (
                    "audit",
                    _e(f"{document['audit_id']} · {document['started_at']} → {document['finished_at']}"),
                ),
            ]
        )
    )
    parts.append(
        "<h2>Summary</h2><p class=muted>Median (number of items scored). n/a: the metric does "
        "not apply to that content (e.g. PESQ on music). ↑ higher is better, ↓ lower is better, →0 "
        "closest to zero is best.</p>"
    )
    extra = {
        name: {
            "tokenized": population["items_by_source"].get(name, 0),
            "failed to tokenize": sum(population["errors_by_source"].get(name, {}).values()),
        }
        for name in summary["by_source"]
    }
    parts.append(_summary_table("per source", "source", summary["by_source"], metrics, extra))
    parts.append(_summary_table("per domain", "domain", summary["by_domain"], metrics))
    parts.append(_summary_table("overall", "", {"all items": summary["overall"]}, metrics))
    metric_plots = [p for p in document["plots"] if p.startswith("plots/metric-")]
    parts.append("<h2>Metric distributions</h2>")
    if document.get("references"):
        parts.append("<p>Dashed lines: published figures, labelled with where they were published.</p>")
    else:
        parts.append(
            "<p class=muted>No reference lines: no published figure is known for this "
            "configuration (semtok bundles the official README's ViSQOL averages of the "
            "32768-vocabulary configurations); add figures with their source with "
            "<code>--references FILE.json</code>.</p>"
        )
    parts.append(
        "<div class=plots>"
        + "".join(
            f'<img alt="distribution of {_e(p[len("plots/metric-") : -4])}" src="{_e(p)}">'
            for p in metric_plots
        )
        + "</div>"
    )
    files = document["examples"]["files"]
    for title, ids, note in (
        ("Worst items", document["examples"]["worst"], f"lowest by {config['rank_metric']}"),
        ("Random items", document["examples"]["random"], "a seeded random pick"),
    ):
        parts.append(
            f"<h2>{title}</h2><p class=muted>{_e(note)}; original and reconstruction, each with "
            "its spectrogram (0–8 kHz, 80 dB range).</p>"
        )
        parts.extend(_example(items[i], files[i], metrics) for i in ids if i in files)
        if not ids:
            parts.append("<p class=muted>none</p>")
    parts.append("<h2>Token statistics (whole output, no decoding)</h2>")
    parts.append(_token_table(document["token_stats"]))
    parts.append(
        "<div class=plots>"
        + "".join(
            f'<img alt="usage of the {_e(p[len("plots/codebook-") : -4])} codebook" src="{_e(p)}">'
            for p in document["plots"]
            if p.startswith("plots/codebook-")
        )
        + "</div>"
    )
    failed = [row for row in document["items"] if row.get("error")]
    parts.append(f"<h2>Items that could not be audited ({len(failed)})</h2>")
    if failed:
        parts.append(
            "<table><tr><th>item</th><th>stage</th><th>reason</th><th>detail</th></tr>"
            + "".join(
                f"<tr><td>{_e(r['id'])}</td><td>{_e(r['error']['stage'])}</td><td>{_e(r['error']['reason'])}</td>"
                f"<td style='text-align:left'>{_e(r['error']['detail'][:300])}</td></tr>"
                for r in failed
            )
            + "</table>"
        )
    else:
        parts.append("<p class=muted>none: every sampled item was decoded and scored.</p>")
    parts.append(
        "<h2>Metrics</h2>" + _dl((METRIC_LABELS.get(m, m), _e(METRIC_NOTES.get(m, ""))) for m in metrics)
    )
    parts.append(
        f"<p class=muted>Every number on this page is in <a href='{JSON_NAME}'>{JSON_NAME}</a>. "
        "Made by semtok audit.</p></body></html>"
    )
    return "\n".join(parts)
