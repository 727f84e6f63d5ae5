"""Charts for the audit report and the audit-diff page (matplotlib), and spectrogram images.

Charts are matplotlib figures saved as SVG text; the pages embed them as data URIs, so a page's
charts need no side files and several charts on one page cannot clash over SVG ids. Figures are
built with the object API (``matplotlib.figure.Figure``), never pyplot: no GUI backend, no global
figure registry, nothing to close; layout measures text with Agg.

Conventions shared by every chart here:

* ``text.parse_math`` is off: group names and labels come from users (file and source names) and a
  ``$`` in them must show as a dollar sign, not start mathtext. Characters XML cannot carry at all
  (control characters, lone surrogates from undecodable file names) are replaced so the SVG parses.
* Colours come from the Okabe–Ito palette, which stays distinguishable with common colour-vision
  deficiencies; A/B comparisons also differ by marker fill, not only by colour.
* The SVG is byte-for-byte reproducible (fixed ``svg.hashsalt``, no date), so a page re-rendered
  from audit.json is identical to the one written with it.
"""

from __future__ import annotations

import base64
import io
import math
import re
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import matplotlib
import matplotlib.colors
import matplotlib.image
import numpy as np
from cycler import cycler
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, FuncFormatter, NullLocator, PercentFormatter
from scipy.signal import ShortTimeFFT, get_window

#: Okabe–Ito colour-blind-safe palette (black moved last: it reads as "axis", not "data").
PALETTE: tuple[str, ...] = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
)
IMPROVED_COLOUR = "#009E73"
REGRESSED_COLOUR = "#D55E00"
NEUTRAL_COLOUR = "#999999"
AXIS_COLOUR = "#444444"
#: Rank–frequency lines are cut down to about this many points (a chart is ~560 px wide, so more
#: points add bytes to the page, not detail).
MAX_LINE_POINTS = 1000
#: Perceptually ordered, and brightness rises monotonically: "brighter" always means "louder".
SPECTROGRAM_CMAP = "magma"
#: Dash patterns of reference lines, so several references stay apart without colour.
REFERENCE_DASHES: tuple[tuple[float, tuple[float, float]], ...] = ((0, (5, 3)), (0, (2, 2)), (0, (8, 3)))

_STYLE: dict[Any, Any] = {  # Any keys: matplotlib types them as a Literal of every rc name
    "text.parse_math": False,
    "svg.fonttype": "none",  # real text: small, crisp, and the browser's sans-serif if DejaVu is absent
    "svg.hashsalt": "semtok-audit",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],  # each SVG text names them all: keep it short
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.edgecolor": AXIS_COLOUR,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "axes.axisbelow": True,
    "axes.prop_cycle": cycler(color=PALETTE),
    "grid.color": "#e6e6e6",
    "legend.frameon": False,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
}
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Reference:
    """A published or expected value to compare a histogram against, e.g. a paper's table entry."""

    value: float
    label: str


@contextmanager
def chart_style() -> Iterator[None]:
    """The report's matplotlib settings, for building and for saving a figure (tick labels are
    made at draw time, so saving needs them too)."""
    with matplotlib.rc_context(_STYLE):
        yield


def figure_svg(fig: Figure) -> str:
    """The figure as SVG text (reproducible: no date, fixed id salt)."""
    buffer = io.StringIO()
    with chart_style():
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def svg_data_uri(svg: str) -> str:
    """A data URI for an ``<img src>``: the chart travels inside the page."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _clean(text: object) -> str:
    """Text XML can carry (why: a control character would make the whole SVG unreadable)."""
    return _XML_INVALID.sub("\ufffd", str(text))


def _direction_note(ax: Axes, higher_is_better: bool | None) -> None:
    if higher_is_better is not None:
        note = "\u2191 higher is better" if higher_is_better else "\u2193 lower is better"
        ax.set_title(note, loc="right", fontsize=8, fontweight="normal", color="#666666")


def _no_values(ax: Axes, text: str = "no values") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="#888888")


def _legend(fig: Figure, handles: list[Artist]) -> None:
    """One legend under the axes, up to four entries a row (fewer for long labels); the figure
    grows by the legend's height so that the plot itself keeps its size however many groups."""
    if not handles:
        return
    labels = [str(h.get_label()) for h in handles]
    longest = max(len(line) for label in labels for line in label.splitlines())
    ncols = 1 if longest > 45 else 2 if longest > 25 else min(len(handles), 4)
    rows = math.ceil(len(handles) / ncols) + (sum(label.count("\n") for label in labels) if ncols == 1 else 0)
    fig.set_figheight(fig.get_figheight() + 0.16 * rows)
    fig.legend(handles=handles, loc="outside lower left", ncols=ncols)


# ----------------------------------------------------------------------------------------------
# Histogram
# ----------------------------------------------------------------------------------------------


def histogram_figure(
    values_by_group: Mapping[str, Sequence[float]],
    *,
    title: str,
    x_label: str,
    references: Sequence[Reference] = (),
    bins: int = 20,
    higher_is_better: bool | None = None,
    size: tuple[float, float] = (5.6, 2.5),
) -> Figure:
    """Overlaid per-group histograms of one metric, with dashed reference lines.

    Why shares, not counts: groups differ in size (many speech clips, few music clips), and with
    counts the small groups would be flattened to the axis; each group's outline therefore shows
    the share of that group's finite values per bin (the legend gives n). NaN/inf are not
    plottable; the legend reports how many were dropped so they are not silently lost. Bin edges
    are shared (over the range of all finite values) so the groups are directly comparable; the x
    axis also covers every reference value.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    groups: list[tuple[str, np.ndarray, int]] = []
    for name, values in values_by_group.items():
        arr = np.asarray(values, dtype=np.float64).ravel()
        finite = arr[np.isfinite(arr)]
        groups.append((_clean(name), finite, int(arr.size - finite.size)))
    refs = [r for r in references if math.isfinite(float(r.value))]
    all_finite = np.concatenate([g[1] for g in groups]) if groups else np.zeros(0)

    with chart_style():
        fig = Figure(figsize=size, layout="constrained")
        ax = fig.subplots()
        ax.set_title(_clean(title))
        _direction_note(ax, higher_is_better)
        ax.set_xlabel(_clean(x_label))
        ax.set_ylabel("share of group")
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        handles: list[Artist] = []
        if all_finite.size:
            lo, hi = float(all_finite.min()), float(all_finite.max())
            if lo == hi:  # one value: a small range around it, one full-height bar
                pad = abs(lo) * 0.05 if lo != 0 else 0.5
                lo, hi = lo - pad, hi + pad
            edges = np.linspace(lo, hi, bins + 1)
        else:
            lo, hi, edges = 0.0, 1.0, None
            _no_values(ax)
        for i, (name, finite, dropped) in enumerate(groups):
            colour = PALETTE[i % len(PALETTE)]
            label = f"{name} (n={finite.size}" + (f", {dropped} non-finite" if dropped else "") + ")"
            if finite.size and edges is not None:
                ax.hist(
                    finite,
                    bins=edges.tolist(),
                    weights=np.full(finite.size, 1.0 / finite.size),
                    histtype="stepfilled",
                    facecolor=matplotlib.colors.to_rgba(colour, 0.35),
                    edgecolor=colour,
                    linewidth=1.2,
                    gid=f"group-{i}",
                )
            handles.append(
                Patch(facecolor=matplotlib.colors.to_rgba(colour, 0.35), edgecolor=colour, label=label)
            )
        for i, ref in enumerate(refs):
            label = textwrap.fill(f"{_clean(ref.label)} ({float(ref.value):g})", 90)
            handles.append(
                ax.axvline(
                    float(ref.value),
                    color="#333333",
                    linestyle=REFERENCE_DASHES[i % len(REFERENCE_DASHES)],
                    linewidth=1.2,
                    label=label,
                    gid=f"reference-{i}",
                )
            )
        x_lo = min([lo, *(float(r.value) for r in refs)])
        x_hi = max([hi, *(float(r.value) for r in refs)])
        if x_lo == x_hi:
            x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
        margin = (x_hi - x_lo) * 0.03
        ax.set_xlim(x_lo - margin, x_hi + margin)
        ax.set_ylim(bottom=0)
        _legend(fig, handles)
    return fig


def histogram_svg(values_by_group: Mapping[str, Sequence[float]], **options: Any) -> str:
    """`histogram_figure` as SVG text."""
    return figure_svg(histogram_figure(values_by_group, **options))


# ----------------------------------------------------------------------------------------------
# Codebook rank-frequency
# ----------------------------------------------------------------------------------------------


def _downsample_indices(n: int, max_points: int = MAX_LINE_POINTS) -> np.ndarray:
    """Evenly spaced indices over [0, n), always keeping the first and the last."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))


def rank_frequency_figure(
    counts_by_group: Mapping[str, np.ndarray], *, title: str, size: tuple[float, float] = (5.6, 2.5)
) -> Figure:
    """Codebook usage: share of each code (sorted, log y) against its rank, one line per group.

    Why this shape: a healthy codebook gives a long, slowly falling line that reaches rank V; a
    collapsing one drops steeply and ends early (the legend says how many codes are used at all).
    Zero counts are not points (log 0); the dashed grey line is the uniform share 1/V when all
    groups share one vocabulary size.
    """
    groups: list[tuple[str, np.ndarray, int]] = []  # name, sorted nonzero shares, vocab size
    for name, counts in counts_by_group.items():
        c = np.asarray(counts, dtype=np.float64)
        if c.ndim != 1:
            raise ValueError(f"counts for {name!r} must be 1-D, got shape {c.shape}")
        if c.size and (not np.all(np.isfinite(c)) or float(c.min()) < 0):
            raise ValueError(f"counts for {name!r} must be finite and >= 0")
        total = float(c.sum())
        nonzero = np.sort(c[c > 0])[::-1]
        groups.append((_clean(name), nonzero / total if total > 0 else nonzero, int(c.size)))
    vocab = max((v for _, _, v in groups), default=1) or 1
    uniform = 1.0 / vocab if len({v for _, _, v in groups}) == 1 else None
    has_values = any(s.size for _, s, _ in groups)

    with chart_style():
        fig = Figure(figsize=size, layout="constrained")
        ax = fig.subplots()
        ax.set_title(_clean(title))
        ax.set_xlabel("code rank (most used first)")
        ax.set_ylabel("share (log)")
        ax.set_yscale("log")
        # plain "0.001" labels: the default log labels are mathtext, which is off here
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_locator(NullLocator())  # decade lines are enough, and minor ticks cost time
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        handles: list[Artist] = []
        for i, (name, shares, v) in enumerate(groups):
            colour = PALETTE[i % len(PALETTE)]
            label = f"{name}: {shares.size:,} of {v:,} codes used"
            if shares.size:
                idx = _downsample_indices(shares.size)
                (line,) = ax.plot(
                    idx + 1,
                    shares[idx],
                    color=colour,
                    linewidth=1.5,
                    marker="o" if idx.size == 1 else None,
                    markersize=4,
                    label=label,
                    gid=f"group-{i}",
                )
                handles.append(line)
            else:
                handles.append(Line2D([], [], color=colour, linewidth=1.5, label=label))
        if uniform is not None and has_values:
            handles.append(
                ax.axhline(
                    uniform, color=NEUTRAL_COLOUR, linestyle=(0, (4, 3)), linewidth=1, label="uniform 1/V"
                )
            )
        if has_values:  # whole decades, so the axis always shows at least two labelled ticks
            shares = np.concatenate([s for _, s, _ in groups] + ([[uniform]] if uniform else []))
            low, high = math.floor(math.log10(shares.min())), math.ceil(math.log10(shares.max()))
            ax.set_ylim(10.0**low, 10.0 ** max(high, low + 1))
        else:
            ax.set_ylim(1e-3, 1.0)
            _no_values(ax)
        ax.set_xlim(*((1.0, float(vocab)) if vocab > 1 else (0.5, 1.5)))
        _legend(fig, handles)
    return fig


def rank_frequency_svg(counts_by_group: Mapping[str, np.ndarray], **options: Any) -> str:
    """`rank_frequency_figure` as SVG text."""
    return figure_svg(rank_frequency_figure(counts_by_group, **options))


# ----------------------------------------------------------------------------------------------
# A/B shift chart
# ----------------------------------------------------------------------------------------------


def _finite(v: float | None) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _value_text(v: float | None) -> str:
    return "n/a" if v is None else f"{float(v):.4g}"


def shift_verdict(metric: str, a: float | None, b: float | None, higher_is_better: Mapping[str, bool]) -> str:
    """better, worse, unchanged or unknown (no direction for the metric, or a value missing)."""
    if a is None or b is None:
        return "unknown"
    if a == b:
        return "unchanged"
    if metric not in higher_is_better:
        return "unknown"
    return "better" if (b > a) == bool(higher_is_better[metric]) else "worse"


_VERDICT_COLOUR = {"better": IMPROVED_COLOUR, "worse": REGRESSED_COLOUR}


def shift_figure(
    rows: Sequence[tuple[str, float | None, float | None]],
    *,
    title: str,
    higher_is_better: Mapping[str, bool] | None = None,
    width: float = 6.4,
    max_label: int = 40,
) -> Figure:
    """Audit A vs audit B: per row a hollow dot (A), a filled dot (B) and an arrow A -> B.

    Why a per-row scale: rows mix units (dB, MOS, ratios), so each row gets its own axis from
    min(0, a, b) to max(0, a, b). Anchoring at zero keeps the arrow length proportional to the
    relative change (4.10 -> 4.12 is a short arrow, not a full-width one); a small tick marks zero
    when it lies inside the row. Colour says whether the change is good (green) or bad (red) per
    ``higher_is_better[label.split(" · ")[0]]``; grey when unknown, unchanged or incomplete.
    """
    hib = dict(higher_is_better or {})
    n = len(rows)
    with chart_style():
        fig = Figure(figsize=(width, 0.95 + 0.24 * max(n, 1)), layout="constrained")
        ax = fig.subplots()
        ax.set_title(_clean(title))
        ax.grid(False)
        for side in ("left", "bottom"):
            ax.spines[side].set_visible(False)
        ax.set_xticks([])
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(max(n, 1) - 0.5, -0.5)  # first row on top
        labels = [_clean(r[0]) for r in rows]
        ax.set_yticks(
            range(n), [lb if len(lb) <= max_label else lb[: max_label - 1] + "\u2026" for lb in labels]
        )
        ax.tick_params(axis="y", length=0)
        if not rows:
            _no_values(ax, "no rows")
        for i, (label, a_raw, b_raw) in enumerate(rows):
            a, b = _finite(a_raw), _finite(b_raw)
            verdict = shift_verdict(label.split(" \u00b7 ")[0], a, b, hib)
            colour = _VERDICT_COLOUR.get(verdict, NEUTRAL_COLOUR)
            if i % 2 == 0:
                ax.axhspan(i - 0.5, i + 0.5, color="#f6f6f6", zorder=0, linewidth=0)
            ax.plot([0, 1], [i, i], color="#dddddd", linewidth=1, zorder=1)
            present = [v for v in (a, b) if v is not None]
            if present:
                lo, hi = min(0.0, *present), max(0.0, *present)

                def pos(v: float, lo: float = lo, hi: float = hi) -> float:
                    return 0.5 if hi == lo else (v - lo) / (hi - lo)

                if lo < 0 < hi:
                    ax.plot([pos(0.0)] * 2, [i - 0.25, i + 0.25], color="#bbbbbb", linewidth=1, zorder=1)
                if a is not None and b is not None and pos(a) != pos(b):
                    ax.annotate(
                        "",
                        xy=(pos(b), i),
                        xytext=(pos(a), i),
                        arrowprops={
                            "arrowstyle": "-|>",
                            "color": colour,
                            "linewidth": 2,
                            "shrinkA": 0,
                            "shrinkB": 4.5,
                            "mutation_scale": 11,
                        },
                        zorder=2,
                        gid=f"arrow-{i}-{verdict}",
                    )
                if a is not None:
                    ax.plot(
                        pos(a),
                        i,
                        "o",
                        markersize=7,
                        markerfacecolor="white",
                        markeredgecolor=AXIS_COLOUR,
                        markeredgewidth=1.5,
                        zorder=3,
                    )
                if b is not None:  # B takes the verdict colour: a small change hides the arrow
                    ax.plot(
                        pos(b),
                        i,
                        "o",
                        markersize=7,
                        markerfacecolor=colour,
                        markeredgecolor=AXIS_COLOUR,
                        markeredgewidth=1,
                        zorder=3,
                    )
            value = ax.annotate(
                f"{_value_text(a_raw)} \u2192 {_value_text(b_raw)}",
                xy=(1.0, i),
                xycoords=("axes fraction", "data"),
                xytext=(10, 0),
                textcoords="offset points",
                va="center",
                annotation_clip=False,
            )
            if a is not None and b is not None:
                ax.annotate(
                    f"({b - a:+.4g})" if b != a else "(0)",
                    xy=(1.0, 0.5),
                    xycoords=value,
                    xytext=(4, 0),
                    textcoords="offset points",
                    va="center",
                    color=colour,
                    annotation_clip=False,
                )
        handles = [
            Line2D(
                [],
                [],
                linestyle="",
                marker="o",
                markersize=7,
                markerfacecolor="white",
                markeredgecolor=AXIS_COLOUR,
                markeredgewidth=1.5,
                label="A",
            ),
            Line2D(
                [],
                [],
                linestyle="",
                marker="o",
                markersize=7,
                markerfacecolor=NEUTRAL_COLOUR,
                markeredgecolor=AXIS_COLOUR,
                label="B",
            ),
            Line2D([], [], color=IMPROVED_COLOUR, linewidth=2, label="better"),
            Line2D([], [], color=REGRESSED_COLOUR, linewidth=2, label="worse"),
            Line2D([], [], color=NEUTRAL_COLOUR, linewidth=2, label="unknown or unchanged"),
        ]
        fig.legend(handles=handles, loc="outside lower left", ncols=len(handles))
    return fig


def shift_svg(rows: Sequence[tuple[str, float | None, float | None]], **options: Any) -> str:
    """`shift_figure` as SVG text."""
    return figure_svg(shift_figure(rows, **options))


# ----------------------------------------------------------------------------------------------
# Spectrogram
# ----------------------------------------------------------------------------------------------


def spectrogram_levels(
    samples: np.ndarray, *, n_fft: int = 512, hop: int = 160, db_range: float = 80.0, max_width: int = 1200
) -> np.ndarray:
    """Log-magnitude spectrogram of a mono clip as levels in [0, 1], shape [n_fft // 2 + 1, columns].

    Frames: periodic Hann window of ``n_fft``, hop ``hop``, no centring; the end is zero-padded
    so the tail is covered: ``n_frames = 1 + ceil(max(0, len - n_fft) / hop)`` (a clip shorter
    than ``n_fft`` is one zero-padded frame). Columns are ``min(n_frames, max_width)``: frames are
    averaged (as power) into columns, so long clips stay a bounded size in the report. Row r is
    r * sample_rate / n_fft Hz. Levels are dB relative to the clip's loudest cell, clipped to
    [-db_range, 0] and mapped to [0, 1]; all-zero input is all 0. NaN/inf samples count as
    silence so a broken clip still renders (its metrics report the breakage).
    """
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"samples must be 1-D, got shape {x.shape}")
    if x.size == 0:
        raise ValueError("samples is empty")
    if n_fft < 2 or hop < 1 or max_width < 1 or not db_range > 0:
        raise ValueError("need n_fft >= 2, hop >= 1, max_width >= 1, db_range > 0")
    n_frames = 1 + (max(0, x.size - n_fft) + hop - 1) // hop
    buf = np.zeros(n_fft + (n_frames - 1) * hop)  # zero-padded to whole frames (scipy wants >= n_fft / 2)
    buf[: x.size] = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    stft = ShortTimeFFT(get_window("hann", n_fft), hop=hop, fs=1.0)
    n_cols = min(n_frames, max_width)
    col_of_frame = (np.arange(n_frames) * n_cols) // n_frames
    acc = np.zeros((n_fft // 2 + 1, n_cols))
    chunk = max(1, (1 << 21) // n_fft)  # bounded memory for long clips
    for start in range(0, n_frames, chunk):
        stop = min(start + chunk, n_frames)
        # k_offset = half a window: frame p starts at sample p * hop instead of centring on it
        power = stft.spectrogram(buf, p0=start, p1=stop, k_offset=stft.m_num_mid)
        np.add.at(acc.T, col_of_frame[start:stop], power.T)
    power = acc / np.bincount(col_of_frame, minlength=n_cols)
    ref = float(power.max())
    if ref <= 0:
        return np.zeros_like(power)
    floor = ref * 10.0 ** (-db_range / 10.0)
    db = 10.0 * np.log10(np.maximum(power, floor) / ref)
    return np.clip(1.0 + db / db_range, 0.0, 1.0)


def spectrogram_png(samples: np.ndarray, **options: Any) -> bytes:
    """`spectrogram_levels` as a PNG, one pixel per cell, low frequencies at the bottom."""
    buffer = io.BytesIO()
    levels = spectrogram_levels(samples, **options)
    matplotlib.image.imsave(
        buffer, levels, cmap=SPECTROGRAM_CMAP, vmin=0.0, vmax=1.0, origin="lower", format="png"
    )
    return buffer.getvalue()
