"""`semtok audit-diff A B`: how the scores moved between two audits, so a regression is visible.

Two audits of the same items (same output and seed, e.g. two decoder settings, or two codec configs
tokenizing the same corpus: item ids match) are compared item by item — the change of each metric
on the very same audio, with a 95 % Student-t interval of the mean difference. Otherwise groups are
compared by their means, with Welch's unpaired interval. Student t rather than the normal 1.96:
audits are small (tens of items), where the normal interval is too narrow and would flag noise. A
shift is called a regression only when its interval lies wholly on the worse side. The page is
the Jinja2 template templates/diff.html.j2 with the charts inside it.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from pipeline.audit.plots import histogram_svg, shift_svg
from pipeline.audit.quality_metrics import HIGHER_IS_BETTER, ZERO_IS_BEST
from pipeline.audit.report import JSON_NAME, METRIC_LABELS, TEMPLATES
from pipeline.dataset.layout import publish
from pipeline.io.storage import open_filesystem, with_retries

CONFIDENCE = 0.95


def load_audit(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An audit document from its folder or its audit.json (any fsspec URL)."""
    target = url if url.rstrip("/").endswith(".json") else f"{url.rstrip('/')}/{JSON_NAME}"
    fs, path = open_filesystem(target, storage_options)
    document = json.loads(with_retries(lambda: fs.cat_file(path)))
    if not str(document.get("format", "")).startswith("semtok-audit/"):
        raise ValueError(f"{target} is not a semtok audit (format {document.get('format')!r})")
    return document


@dataclass
class Shift:
    metric: str
    group: str  # "overall", "domain:speech", "source:librispeech"
    a_mean: float | None
    b_mean: float | None
    a_n: int
    b_n: int
    delta: float | None  # b - a (paired: mean of per-item differences)
    low: float | None  # 95 % Student-t (paired) or Welch (unpaired) interval of delta
    high: float | None
    paired_items: int = 0
    verdict: str = "unchanged"  # improved, regressed, unchanged (within noise), n/a


@dataclass
class AuditDiff:
    a: str
    b: str
    shifts: list[Shift] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Shift]:
        return [s for s in self.shifts if s.verdict == "regressed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "notes": self.notes,
            "shifts": [asdict(s) for s in self.shifts],
            "regressions": len(self.regressions),
        }

    def text(self) -> str:
        lines = [
            f"A: {self.a}",
            f"B: {self.b}",
            *[f"note: {n}" for n in self.notes],
            f"{'metric':<18} {'group':<24} {'A':>9} {'B':>9} {'B-A':>9}  95% interval       verdict",
        ]
        for s in self.shifts:
            interval = f"[{_fmt(s.low)}, {_fmt(s.high)}]" if s.low is not None else "-"
            paired = f" (paired n={s.paired_items})" if s.paired_items else ""
            lines.append(
                f"{s.metric:<18} {s.group[:24]:<24} {_fmt(s.a_mean):>9} {_fmt(s.b_mean):>9} "
                f"{_fmt(s.delta):>9}  {interval:<18} {s.verdict}{paired}"
            )
        lines.append(f"{len(self.regressions)} regression(s)")
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _values(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[str, float]:
    """id → value; magnitudes for metrics whose best value is 0 (a shift toward 0 is a gain)."""
    size = abs if metric in ZERO_IS_BEST else float
    return {
        r["id"]: float(size(r["scores"][metric]))
        for r in rows
        if not r.get("error") and metric in r["scores"]
    }


def _bounds(result: Any) -> tuple[float, float]:
    """The test's confidence interval. Identical values (an unchanged metric) are expected here:
    scipy warns that their t statistic is undefined, but the interval (zero width) is right."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        interval = result.confidence_interval(CONFIDENCE)
    return float(interval.low), float(interval.high)


def _interval(differences: np.ndarray) -> tuple[float, float, float]:
    """Mean of paired differences and its Student-t interval (n - 1 degrees of freedom)."""
    mean = float(differences.mean())
    if differences.size < 2:
        return mean, -math.inf, math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_1samp(differences, 0.0)
    return (mean, *_bounds(result))


def _unpaired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Difference of means b - a and its Welch interval (no equal-variance assumption)."""
    delta = float(b.mean() - a.mean())
    if a.size < 2 or b.size < 2:
        return delta, -math.inf, math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(b, a, equal_var=False)
    return (delta, *_bounds(result))


def _verdict(metric: str, low: float, high: float) -> str:
    better = HIGHER_IS_BETTER.get(metric)
    if better is None:
        return "n/a"
    if low > 0 or high < 0:
        improved = (low > 0) == better
        return "improved" if improved else "regressed"
    return "unchanged"


def compare(
    metric: str, group: str, a_rows: Sequence[Mapping[str, Any]], b_rows: Sequence[Mapping[str, Any]]
) -> Shift:
    """One metric in one group of items: paired over shared item ids when there are at least two."""
    a_vals, b_vals = _values(a_rows, metric), _values(b_rows, metric)
    a_arr = np.asarray(list(a_vals.values()))
    b_arr = np.asarray(list(b_vals.values()))
    shift = Shift(
        metric,
        group,
        float(a_arr.mean()) if a_arr.size else None,
        float(b_arr.mean()) if b_arr.size else None,
        int(a_arr.size),
        int(b_arr.size),
        None,
        None,
        None,
    )
    if not a_arr.size or not b_arr.size:
        shift.verdict = "n/a"
        return shift
    shared = sorted(set(a_vals) & set(b_vals))
    if len(shared) >= 2:
        delta, low, high = _interval(np.asarray([b_vals[i] - a_vals[i] for i in shared]))
        shift.paired_items = len(shared)
    else:
        delta, low, high = _unpaired(a_arr, b_arr)
    shift.delta = delta
    shift.low, shift.high = (low if math.isfinite(low) else None), (high if math.isfinite(high) else None)
    shift.verdict = _verdict(metric, low, high)
    return shift


def diff_audits(
    a: Mapping[str, Any], b: Mapping[str, Any], *, a_name: str = "A", b_name: str = "B"
) -> AuditDiff:
    """Every metric both audits computed, overall and per domain and per source present in both."""
    diff = AuditDiff(a_name, b_name)
    if a.get("dataset_version") != b.get("dataset_version"):
        diff.notes.append(
            f"different dataset versions: {a.get('dataset_version')} vs {b.get('dataset_version')}"
        )
    for key in ("steps", "guidance", "max_item_seconds", "seed"):
        if a["config"].get(key) != b["config"].get(key):
            diff.notes.append(f"{key} differs: {a['config'].get(key)} vs {b['config'].get(key)}")
    if a.get("random_weights") or b.get("random_weights"):
        diff.notes.append("at least one audit used RANDOM weights: its numbers are meaningless")
    metrics = [m for m in a["config"]["metrics"] if m in b["config"]["metrics"]]
    groups: list[tuple[str, str, str | None]] = [("overall", "", None)]
    for kind in ("domain", "source"):
        names = sorted({r[kind] for r in a["items"]} & {r[kind] for r in b["items"]})
        groups += [(f"{kind}:{name}", kind, name) for name in names]
    for metric in metrics:
        for label, kind, name in groups:
            a_rows = [r for r in a["items"] if name is None or r[kind] == name]
            b_rows = [r for r in b["items"] if name is None or r[kind] == name]
            shift = compare(metric, label, a_rows, b_rows)
            if shift.a_n or shift.b_n:
                diff.shifts.append(shift)
    return diff


def write_diff_report(
    diff: AuditDiff,
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    out_url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """diff.json, per-metric overlays of A and B (inside the page, and as files under plots/), and an
    index.html; returns the page's URL."""
    fs, root = open_filesystem(out_url, storage_options)
    root = root.rstrip("/")
    charts: dict[str, str] = {}
    rows = [(f"{s.metric} · {s.group}", s.a_mean, s.b_mean) for s in diff.shifts]
    if rows:
        charts["plots/shifts.svg"] = shift_svg(
            rows, title="mean per metric and group: A → B", higher_is_better=HIGHER_IS_BETTER
        )
    for metric in sorted({s.metric for s in diff.shifts}):
        values = {
            f"A ({diff.a})"[:60]: list(_values(a["items"], metric).values()),
            f"B ({diff.b})"[:60]: list(_values(b["items"], metric).values()),
        }
        charts[f"plots/metric-{metric}.svg"] = histogram_svg(
            values,
            title=METRIC_LABELS.get(metric, metric),
            x_label=metric,
            higher_is_better=HIGHER_IS_BETTER.get(metric),
        )
    fs.makedirs(f"{root}/plots", exist_ok=True)  # local disks; a no-op on buckets
    for name, svg in charts.items():
        data = svg.encode()
        with_retries(functools.partial(fs.pipe_file, f"{root}/{name}", data))
    with_retries(
        lambda: publish(
            fs, f"{root}/diff.json", json.dumps(diff.to_dict(), indent=1, sort_keys=True).encode()
        )
    )
    page = TEMPLATES.get_template("diff.html.j2").render(
        diff=diff,
        random_weights=bool(a.get("random_weights") or b.get("random_weights")),
        confidence=f"{CONFIDENCE:.0%}",
        fmt=_fmt,
        shift_chart=charts.get("plots/shifts.svg"),
        metric_charts=[
            (name, svg) for name, svg in sorted(charts.items()) if name.startswith("plots/metric-")
        ],
    )
    with_retries(lambda: publish(fs, f"{root}/index.html", page.encode()))
    return f"{out_url.rstrip('/')}/index.html"
