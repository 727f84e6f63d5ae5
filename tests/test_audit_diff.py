"""audit-diff: paired and unpaired shifts with intervals, verdicts by metric direction, the report."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pipeline.audit.diff import AuditDiff, compare, diff_audits, load_audit, write_diff_report

N = 30
METRICS = ["visqol", "log_mel_distance", "loudness_diff_db"]


def _items(
    values: dict[str, np.ndarray],
    *,
    prefix: str = "item",
    sources=("libri", "vctk"),
    domains=("speech", "speech"),
) -> list[dict]:
    n = len(next(iter(values.values())))
    rows = []
    for i in range(n):
        rows.append(
            {
                "id": f"{prefix}-{i:03d}",
                "unit_id": f"unit-{i % 3}",
                "source": sources[i % len(sources)],
                "domain": domains[i % len(domains)],
                "duration_s": 4.0,
                "audited_seconds": 4.0,
                "n_frames": 200,
                "decode_seed": i,
                "decode_seconds": 1.0,
                "score_seconds": 0.1,
                "scores": {m: float(v[i]) for m, v in values.items()},
                "not_applicable": {},
                "error": None,
            }
        )
    return rows


def _audit(
    values: dict[str, np.ndarray],
    *,
    steps: int = 50,
    random_weights: bool = False,
    dataset_version: str = "v-abc",
    **item_kwargs,
) -> dict:
    """The least of an audit document that diff_audits and write_diff_report read."""
    return {
        "format": "semtok-audit/1",
        "dataset_version": dataset_version,
        "random_weights": random_weights,
        "config": {
            "metrics": list(values),
            "seed": 0,
            "steps": steps,
            "guidance": 2.0,
            "max_item_seconds": 10.24,
        },
        "items": _items(values, **item_kwargs),
    }


def _base(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "visqol": rng.uniform(2.0, 4.0, N),
        "log_mel_distance": rng.uniform(0.5, 1.5, N),
        "loudness_diff_db": rng.uniform(-7.0, -5.0, N),
    }


def _overall(diff: AuditDiff, metric: str):
    [shift] = [s for s in diff.shifts if s.metric == metric and s.group == "overall"]
    return shift


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def test_improvement_is_paired_and_improved(rng):
    base = _base(rng)
    a = _audit(base)
    b = _audit({**base, "visqol": base["visqol"] + 0.5 + rng.normal(0, 0.05, N)})
    diff = diff_audits(a, b)
    shift = _overall(diff, "visqol")
    assert shift.verdict == "improved"
    assert shift.paired_items == N
    assert shift.a_n == shift.b_n == N
    assert shift.delta == pytest.approx(0.5, abs=0.05)
    assert shift.low is not None and shift.high is not None
    assert 0 < shift.low < shift.delta < shift.high
    assert shift.a_mean == pytest.approx(float(base["visqol"].mean()))
    # untouched metrics: identical values, a zero-width interval on 0: unchanged
    assert _overall(diff, "log_mel_distance").verdict == "unchanged"
    assert diff.regressions == []
    # groups: overall, per domain and per source present in both
    groups = {s.group for s in diff.shifts if s.metric == "visqol"}
    assert groups == {"overall", "domain:speech", "source:libri", "source:vctk"}
    assert {s.verdict for s in diff.shifts if s.metric == "visqol"} == {"improved"}
    assert {s.paired_items for s in diff.shifts if s.group.startswith("source:")} == {N // 2}


def test_drop_is_a_regression(rng):
    base = _base(rng)
    a = _audit(base)
    b = _audit({**base, "visqol": base["visqol"] - 0.5 + rng.normal(0, 0.05, N)})
    diff = diff_audits(a, b, a_name="old", b_name="new")
    shift = _overall(diff, "visqol")
    assert shift.verdict == "regressed"
    assert shift.paired_items == N
    assert shift.high < 0
    assert shift in diff.regressions
    assert all(s.metric == "visqol" for s in diff.regressions)
    assert diff.to_dict()["regressions"] == len(diff.regressions) >= 1
    assert diff.a == "old" and diff.b == "new"


def test_noise_is_unchanged(rng):
    base = _base(rng)
    noise = rng.normal(0, 0.01, N)
    noise -= noise.mean()  # exactly zero-mean: the interval must straddle 0
    a = _audit(base)
    b = _audit({**base, "visqol": base["visqol"] + noise})
    shift = _overall(diff_audits(a, b), "visqol")
    assert shift.verdict == "unchanged"
    assert shift.low < 0 < shift.high
    assert shift.delta == pytest.approx(0.0, abs=1e-12)


def test_lower_is_better_metric_rising_is_a_regression(rng):
    base = _base(rng)
    a = _audit(base)
    b = _audit({**base, "log_mel_distance": base["log_mel_distance"] + 0.3 + rng.normal(0, 0.02, N)})
    diff = diff_audits(a, b)
    shift = _overall(diff, "log_mel_distance")
    assert shift.delta > 0
    assert shift.verdict == "regressed"
    assert shift in diff.regressions
    # and falling is an improvement
    c = _audit({**base, "log_mel_distance": base["log_mel_distance"] - 0.3 + rng.normal(0, 0.02, N)})
    assert _overall(diff_audits(a, c), "log_mel_distance").verdict == "improved"


def test_zero_is_best_metric_compares_magnitudes(rng):
    base = _base(rng)  # loudness around -6 dB
    a = _audit(base)
    b = _audit({**base, "loudness_diff_db": rng.uniform(-1.5, -0.5, N)})
    shift = _overall(diff_audits(a, b), "loudness_diff_db")
    # signed values rose (toward 0); magnitudes fell: closer to 0 is better
    assert shift.a_mean == pytest.approx(float(np.abs(base["loudness_diff_db"]).mean()))
    assert shift.delta < 0
    assert shift.verdict == "improved"
    # overshooting to +6 dB is as bad as -6 dB: no improvement
    c = _audit({**base, "loudness_diff_db": -base["loudness_diff_db"]})
    assert _overall(diff_audits(a, c), "loudness_diff_db").verdict == "unchanged"
    # moving away from 0 is a regression
    d = _audit({**base, "loudness_diff_db": base["loudness_diff_db"] - 3.0})
    assert _overall(diff_audits(a, d), "loudness_diff_db").verdict == "regressed"


def test_no_shared_items_is_an_unpaired_comparison(rng):
    base = _base(rng)
    a = _audit(base, prefix="a")
    b = _audit({**base, "visqol": base["visqol"] + 1.0 + rng.normal(0, 0.1, N)}, prefix="b")
    assert not {r["id"] for r in a["items"]} & {r["id"] for r in b["items"]}
    diff = diff_audits(a, b)
    shift = _overall(diff, "visqol")
    assert shift.paired_items == 0
    assert shift.verdict == "improved"
    b_visqol = np.array([r["scores"]["visqol"] for r in b["items"]])
    assert shift.delta == pytest.approx(float(b_visqol.mean() - base["visqol"].mean()))
    # an unpaired interval is wider than the paired one on the same numbers
    paired = _overall(diff_audits(a, _audit({**base, "visqol": b_visqol}, prefix="a")), "visqol")
    assert paired.paired_items == N
    assert (shift.high - shift.low) > (paired.high - paired.low)
    # an unpaired comparison of equal distributions is unchanged
    same = diff_audits(a, _audit(base, prefix="b"))
    assert _overall(same, "visqol").verdict == "unchanged"
    assert _overall(same, "visqol").paired_items == 0


def test_small_samples_get_student_t_intervals():
    """Three paired items whose mean change is 2.4 standard errors: the normal 1.96 interval would
    call it an improvement; Student t with 2 degrees of freedom (4.30) says it is within noise."""
    a = _audit({"visqol": np.array([3.0, 3.0, 3.0])})
    b = _audit({"visqol": np.array([3.2, 3.5, 4.0])})
    shift = _overall(diff_audits(a, b), "visqol")
    differences = np.array([0.2, 0.5, 1.0])
    se = differences.std(ddof=1) / np.sqrt(3)
    assert 1.96 < differences.mean() / se < stats.t.ppf(0.975, 2)
    assert shift.paired_items == 3
    assert shift.low < 0 < shift.high and shift.verdict == "unchanged"
    half = stats.t.ppf(0.975, df=2) * se
    assert (shift.low, shift.high) == pytest.approx((differences.mean() - half, differences.mean() + half))


def test_unpaired_interval_is_welch():
    a_values, b_values = np.array([3.0, 3.1, 2.9, 3.05]), np.array([3.6, 3.2, 4.1])
    a = _audit({"visqol": a_values}, prefix="a")
    b = _audit({"visqol": b_values}, prefix="b")
    shift = _overall(diff_audits(a, b), "visqol")
    assert shift.paired_items == 0
    va, vb = a_values.var(ddof=1) / a_values.size, b_values.var(ddof=1) / b_values.size
    df = (va + vb) ** 2 / (va**2 / (a_values.size - 1) + vb**2 / (b_values.size - 1))  # Welch–Satterthwaite
    half = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
    delta = b_values.mean() - a_values.mean()
    assert (shift.low, shift.high) == pytest.approx((delta - half, delta + half))


def test_single_items_have_no_interval():
    a = _audit({"visqol": np.array([3.0])})
    b = _audit({"visqol": np.array([4.0])})
    shift = _overall(diff_audits(a, b), "visqol")
    assert shift.low is None and shift.high is None
    assert shift.delta == pytest.approx(1.0)
    assert shift.verdict == "unchanged"  # one item: no evidence either way


def test_failed_items_and_missing_metric_are_left_out(rng):
    base = _base(rng)
    a = _audit(base)
    b = _audit(base)
    b["items"][0]["error"] = {"stage": "decode", "reason": "oom", "detail": "x"}
    shift = _overall(diff_audits(a, b), "visqol")
    assert shift.b_n == N - 1 and shift.paired_items == N - 1
    # metric only one audit computed: not compared
    c = _audit({"visqol": base["visqol"]})
    assert {s.metric for s in diff_audits(a, c).shifts} == {"visqol"}
    # a metric with no values anywhere: n/a
    empty = compare("visqol", "overall", [], [])
    assert empty.verdict == "n/a" and empty.a_mean is None


def test_notes_name_differences(rng):
    base = _base(rng)
    a = _audit(base, steps=50)
    b = _audit(base, steps=25, random_weights=True, dataset_version="v-other")
    notes = diff_audits(a, b).notes
    assert any("steps" in n and "50" in n and "25" in n for n in notes)
    assert any("RANDOM" in n for n in notes)
    assert any("dataset version" in n and "v-other" in n for n in notes)
    assert diff_audits(a, _audit(base)).notes == []


def test_text_and_to_dict(rng):
    base = _base(rng)
    a = _audit(base)
    b = _audit({**base, "visqol": base["visqol"] - 0.5 + rng.normal(0, 0.05, N)})
    diff = diff_audits(a, b, a_name="run-a", b_name="run-b")
    text = diff.text()
    for metric in METRICS:
        assert metric in text
    assert f"{len(diff.regressions)} regression(s)" in text
    assert len(diff.regressions) == 4  # visqol overall, domain, two sources
    assert "run-a" in text and "run-b" in text
    assert f"(paired n={N})" in text
    data = json.loads(json.dumps(diff.to_dict(), allow_nan=False))
    assert data["regressions"] == 4
    assert data["a"] == "run-a"
    assert len(data["shifts"]) == len(diff.shifts)
    assert {s["verdict"] for s in data["shifts"]} >= {"regressed", "unchanged"}


def _charts(page: str) -> dict[str, str]:
    """data-plot name -> the SVG inside the page."""
    found = re.findall(r'data-plot="([^"]*)" src="data:image/svg\+xml;base64,([^"]*)"', page)
    return {name: base64.b64decode(data).decode("utf-8") for name, data in found}


def test_write_diff_report(rng, tmp_path: Path):
    base = _base(rng)
    a = _audit(base)
    b = _audit({**base, "visqol": base["visqol"] - 0.5 + rng.normal(0, 0.05, N)}, random_weights=True)
    diff = diff_audits(a, b, a_name="<A & co>", b_name="B")
    out = tmp_path / "diff"
    url = write_diff_report(diff, a, b, str(out))
    assert url == f"{out}/index.html"
    page = (out / "index.html").read_text()
    data = json.loads((out / "diff.json").read_text())
    assert data == json.loads(json.dumps(diff.to_dict()))
    # the charts are inside the page (no side file needed to view it), and also files under plots/
    assert re.findall(r'src="([^"]*)"', page) and all(
        src.startswith("data:image/svg+xml;base64,") for src in re.findall(r'src="([^"]*)"', page)
    )
    charts = _charts(page)
    assert set(charts) == {"plots/shifts.svg"} | {f"plots/metric-{m}.svg" for m in METRICS}
    for name, svg in charts.items():
        assert ET.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg", name
        assert (out / name).read_text() == svg, name
    assert f"{len(diff.regressions)} regression(s)" in page
    assert "RANDOM weights" in page
    assert "&lt;A &amp; co&gt;" in page and "<A & co>" not in page
    assert page.count('<tr class="regressed">') == len(diff.regressions)
    shift_svg_texts = ["".join(t.itertext()) for t in ET.fromstring(charts["plots/shifts.svg"]).iter()]
    assert "visqol · overall" in shift_svg_texts


def test_load_audit(tmp_path: Path, rng):
    document = _audit(_base(rng))
    folder = tmp_path / "audit-1"
    folder.mkdir()
    (folder / "audit.json").write_text(json.dumps(document))
    assert load_audit(str(folder)) == document
    assert load_audit(str(folder) + "/") == document
    assert load_audit(str(folder / "audit.json")) == document
    assert load_audit(f"file://{folder}") == document
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something-else/1", "items": []}))
    with pytest.raises(ValueError, match="not a semtok audit"):
        load_audit(str(other))
    no_format = tmp_path / "plain"
    no_format.mkdir()
    (no_format / "audit.json").write_text(json.dumps({"items": []}))
    with pytest.raises(ValueError, match="not a semtok audit"):
        load_audit(str(no_format))
    with pytest.raises(FileNotFoundError):
        load_audit(str(tmp_path / "missing"))
