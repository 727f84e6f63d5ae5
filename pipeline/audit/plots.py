"""Pictures for the static HTML quality-audit report: SVG charts and a spectrogram PNG.

Why hand-written: the report must render anywhere (a browser opening a file from object storage,
no server, no JavaScript) and the pipeline must not grow a plotting dependency (matplotlib, PIL)
just for a handful of simple charts. So the charts are small standalone SVG documents built as
strings, and the spectrogram is an 8-bit RGB PNG written by a minimal encoder on top of ``zlib``.

Conventions shared by every SVG here:

* All user-supplied text (group names, labels, titles) is XML-escaped, and characters that XML
  cannot carry at all (control characters, lone surrogates from undecodable file names) are
  replaced, so the output always parses.
* No ``id`` attributes (markers, clip paths): several charts are inlined into one HTML page, and
  duplicate ids across them would collide.
* Colours come from the Okabe–Ito palette, which stays distinguishable with common colour-vision
  deficiencies; A/B comparisons also differ by shape, not only by colour.
"""

from __future__ import annotations

import html
import math
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

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
#: Rank–frequency polylines are cut down to about this many points (a chart is ~500 px wide, so
#: more points add bytes to the HTML, not detail).
MAX_POLYLINE_POINTS = 1000
#: Dark-to-bright colormap anchors (approximately magma): perceptually ordered, and brightness
#: (R+G+B) increases monotonically, so "brighter" always means "louder".
COLORMAP_ANCHORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 4),
    (59, 15, 112),
    (140, 41, 129),
    (222, 73, 104),
    (254, 159, 109),
    (252, 253, 191),
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SVG_NS = "http://www.w3.org/2000/svg"
_CHAR_W = 6.2  # rough width of one character at font-size 11, for layout only
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Reference:
    """A published or expected value to compare a histogram against, e.g. a paper's table entry."""

    value: float
    label: str


# ----------------------------------------------------------------------------------------------
# Small SVG helpers
# ----------------------------------------------------------------------------------------------


def _esc(text: object) -> str:
    """Escape text for XML content and attributes; replace characters XML cannot represent."""
    return html.escape(_XML_INVALID.sub("\ufffd", str(text)), quote=True)


def _fmt(x: float) -> str:
    """Compact number for tick labels and values: ``0.25``, ``4.105``, ``12.5k``, ``3e-5``."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    a = abs(x)
    if 1e-3 <= a < 1e4:
        s = f"{x:.4g}"
    elif 1e4 <= a < 1e6:
        s = f"{x / 1e3:.4g}k"
    elif 1e6 <= a < 1e9:
        s = f"{x / 1e6:.4g}M"
    else:
        mantissa, exp = f"{x:.2e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        s = f"{mantissa}e{int(exp)}"
    return "0" if s in ("-0", "0") else s


def _c(v: float) -> str:
    """Coordinate with one decimal: enough for screens, keeps the SVG small."""
    return f"{v:.1f}"


def _text(
    x: float,
    y: float,
    s: str,
    *,
    anchor: str = "start",
    size: float | None = None,
    fill: str | None = None,
    weight: str | None = None,
    extra: str = "",
) -> str:
    attrs = f'x="{_c(x)}" y="{_c(y)}"'
    if anchor != "start":
        attrs += f' text-anchor="{anchor}"'
    if size is not None:
        attrs += f' font-size="{size:g}"'
    if fill is not None:
        attrs += f' fill="{fill}"'
    if weight is not None:
        attrs += f' font-weight="{weight}"'
    if extra:
        attrs += " " + extra
    return f"<text {attrs}>{_esc(s)}</text>"


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str, extra: str = "") -> str:
    return (
        f'<line x1="{_c(x1)}" y1="{_c(y1)}" x2="{_c(x2)}" y2="{_c(y2)}" stroke="{stroke}"'
        + (f" {extra}" if extra else "")
        + "/>"
    )


def _svg_open(width: int, height: int, title: str) -> list[str]:
    """Root element with explicit size and viewBox, a white background (readable in dark pages)."""
    return [
        f'<svg xmlns="{_SVG_NS}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="sans-serif" font-size="11" role="img" aria-label="{_esc(title)}">',
        f"<title>{_esc(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        _text(8, 16, title, size=12, weight="bold", fill="#222222"),
    ]


def _nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) inside [lo, hi]."""
    span = hi - lo
    if not (math.isfinite(span) and span > 0):
        return [lo] if math.isfinite(lo) else []
    raw = span / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw * (1 - 1e-9))
    k0 = math.ceil(lo / step - 1e-9)
    k1 = math.floor(hi / step + 1e-9)
    return [k * step for k in range(k0, k1 + 1)]


def _legend(
    entries: Sequence[tuple[str, str]], left: float, right: float, top: float, *, opacity: float = 0.6
) -> tuple[list[str], float]:
    """Swatch + text entries flowed left to right, wrapping; returns (elements, height used)."""
    parts: list[str] = []
    x, y, row_h = left, top, 15.0
    rows = 1 if entries else 0
    for colour, label in entries:
        w = 16 + len(label) * _CHAR_W + 14
        if x > left and x + w > right:
            x, y = left, y + row_h
            rows += 1
        parts.append(
            f'<rect x="{_c(x)}" y="{_c(y - 9)}" width="11" height="11" fill="{colour}" '
            f'fill-opacity="{opacity:g}" stroke="{colour}"/>'
        )
        parts.append(_text(x + 16, y, label, fill="#222222"))
        x += w
    return parts, rows * row_h


def _axes(left: float, top: float, right: float, bottom: float) -> str:
    return (
        f'<path d="M{_c(left)},{_c(top)} L{_c(left)},{_c(bottom)} L{_c(right)},{_c(bottom)}" '
        f'fill="none" stroke="{AXIS_COLOUR}" stroke-width="1"/>'
    )


def _x_tick(x: float, bottom: float, label: str) -> list[str]:
    return [
        _line(x, bottom, x, bottom + 4, AXIS_COLOUR),
        _text(x, bottom + 15, label, anchor="middle", size=10, fill="#333333"),
    ]


def _y_tick(y: float, left: float, right: float, label: str) -> list[str]:
    return [
        _line(left, y, right, y, "#e6e6e6"),
        _line(left - 4, y, left, y, AXIS_COLOUR),
        _text(left - 6, y + 3.5, label, anchor="end", size=10, fill="#333333"),
    ]


# ----------------------------------------------------------------------------------------------
# Histogram
# ----------------------------------------------------------------------------------------------


def histogram_svg(
    values_by_group: Mapping[str, Sequence[float]],
    *,
    title: str,
    x_label: str,
    references: Sequence[Reference] = (),
    bins: int = 20,
    higher_is_better: bool | None = None,
    width: int = 560,
    height: int = 260,
) -> str:
    """Overlaid per-group histograms of one metric, with dashed reference lines.

    Why shares, not counts: groups differ in size (many speech clips, few music clips), and with
    counts the small groups would be flattened to the axis; each group's bars therefore show the
    share of that group's finite values per bin (the legend gives n). NaN/inf are not plottable;
    the legend reports how many were dropped so they are not silently lost. Bin edges are shared
    (over the range of all finite values) so the groups are directly comparable; the x axis also
    covers every reference value. ``height`` grows if the legend needs more rows.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    groups: list[tuple[str, np.ndarray, int]] = []
    for name, values in values_by_group.items():
        arr = np.asarray(values, dtype=np.float64).ravel()
        finite = arr[np.isfinite(arr)]
        groups.append((str(name), finite, int(arr.size - finite.size)))
    refs = [r for r in references if math.isfinite(float(r.value))]

    all_finite = np.concatenate([g[1] for g in groups]) if groups else np.zeros(0)
    has_values = all_finite.size > 0
    if has_values:
        d_lo, d_hi = float(all_finite.min()), float(all_finite.max())
        if d_lo == d_hi:
            pad = abs(d_lo) * 0.05 if d_lo != 0 else 0.5
            d_lo, d_hi = d_lo - pad, d_hi + pad
    else:
        d_lo, d_hi = 0.0, 1.0
    ref_vals = [float(r.value) for r in refs]
    x_lo = min([d_lo, *ref_vals]) if has_values or not ref_vals else min(ref_vals)
    x_hi = max([d_hi, *ref_vals]) if has_values or not ref_vals else max(ref_vals)
    if x_lo == x_hi:
        pad = abs(x_lo) * 0.05 if x_lo != 0 else 0.5
        x_lo, x_hi = x_lo - pad, x_hi + pad
    margin = (x_hi - x_lo) * 0.03
    x_lo, x_hi = x_lo - margin, x_hi + margin

    edges = np.linspace(d_lo, d_hi, bins + 1)
    shares: list[np.ndarray] = []
    for _, finite, _ in groups:
        hist = np.histogram(finite, bins=edges)[0].astype(np.float64)
        shares.append(hist / finite.size if finite.size else hist)
    y_max = max((float(s.max()) for s in shares if s.size), default=0.0)
    y_max = y_max * 1.08 if y_max > 0 else 1.0

    entries = []
    for i, (name, finite, dropped) in enumerate(groups):
        label = f"{name} (n={finite.size:,}" + (f", {dropped:,} non-finite)" if dropped else ")")
        entries.append((PALETTE[i % len(PALETTE)], label))
    left, right = 56.0, width - 14.0
    legend_h = _legend(entries, left, right, 0.0)[1]
    height = max(height, int(math.ceil(28 + 60 + 36 + legend_h + 6)))
    top, bottom = 28.0, height - 36.0 - legend_h - 4.0

    def sx(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * (right - left)

    def sy(v: float) -> float:
        return bottom - v / y_max * (bottom - top)

    parts = _svg_open(width, height, title)
    if higher_is_better is not None:
        note = "\u2191 higher is better" if higher_is_better else "\u2193 lower is better"
        parts.append(_text(width - 10, 16, note, anchor="end", size=10, fill="#666666"))
    for t in _nice_ticks(0.0, y_max, 4):
        parts += _y_tick(sy(t), left, right, f"{_fmt(t * 100)}%")
    for t in _nice_ticks(x_lo, x_hi, 6):
        parts += _x_tick(sx(t), bottom, _fmt(t))
    parts.append(_axes(left, top, right, bottom))
    parts.append(_text((left + right) / 2, bottom + 29, x_label, anchor="middle", fill="#222222"))
    parts.append(
        _text(
            14,
            (top + bottom) / 2,
            "share of group",
            anchor="middle",
            size=10,
            fill="#333333",
            extra=f'transform="rotate(-90 14 {_c((top + bottom) / 2)})"',
        )
    )

    if has_values:
        for i, share in enumerate(shares):
            if groups[i][1].size == 0:
                continue
            colour = PALETTE[i % len(PALETTE)]
            d = [f"M{_c(sx(edges[0]))},{_c(bottom)}"]
            for b in range(bins):
                y = _c(sy(float(share[b])))
                d.append(f"L{_c(sx(edges[b]))},{y} L{_c(sx(edges[b + 1]))},{y}")
            d.append(f"L{_c(sx(edges[-1]))},{_c(bottom)} Z")
            parts.append(
                f'<path d="{" ".join(d)}" fill="{colour}" fill-opacity="0.35" stroke="{colour}" '
                f'stroke-width="1.2"/>'
            )
    else:
        parts.append(
            _text(
                (left + right) / 2, (top + bottom) / 2, "no values", anchor="middle", size=13, fill="#888888"
            )
        )

    for i, ref in enumerate(sorted(refs, key=lambda r: float(r.value))):
        x = sx(float(ref.value))
        parts.append(_line(x, top, x, bottom, "#333333", 'stroke-width="1.2" stroke-dasharray="5,3"'))
        on_right = x > (left + right) / 2
        label = f"{ref.label} ({_fmt(float(ref.value))})"
        parts.append(
            _text(
                x - 3 if on_right else x + 3,
                top + 10 + 12 * i,
                label,
                anchor="end" if on_right else "start",
                size=10,
                fill="#333333",
                extra='stroke="#ffffff" stroke-width="3" paint-order="stroke"',
            )
        )

    parts += _legend(entries, left, right, height - legend_h + 5)[0]
    parts.append("</svg>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# Codebook rank-frequency
# ----------------------------------------------------------------------------------------------


def _downsample_indices(n: int, max_points: int = MAX_POLYLINE_POINTS) -> np.ndarray:
    """Evenly spaced indices over [0, n), always keeping the first and the last."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))


def rank_frequency_svg(
    counts_by_group: Mapping[str, np.ndarray], *, title: str, width: int = 560, height: int = 260
) -> str:
    """Codebook usage: share of each code (sorted, log y) against its rank, one line per group.

    Why this shape: a healthy codebook gives a long, slowly falling line that reaches rank V; a
    collapsing one drops steeply and ends early (the legend says how many codes are used at all).
    Zero counts are not points (log 0); the dashed grey line is the uniform share 1/V when all
    groups share one vocabulary size. ``height`` grows if the legend needs more rows.
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
        groups.append((str(name), nonzero / total if total > 0 else nonzero, int(c.size)))
    vocab = max((v for _, _, v in groups), default=1) or 1
    vocab_sizes = {v for _, _, v in groups}
    uniform = 1.0 / vocab if len(vocab_sizes) == 1 and vocab > 0 else None

    positive = [float(s.min()) for _, s, _ in groups if s.size]
    has_values = bool(positive)
    lo_share = min(positive + ([uniform] if uniform else [])) if has_values else 1e-3
    hi_share = max(float(s.max()) for _, s, _ in groups if s.size) if has_values else 1.0
    y_lo = math.floor(math.log10(lo_share))
    y_hi = math.ceil(math.log10(hi_share))
    if y_hi <= y_lo:
        y_hi = y_lo + 1

    entries = [
        (PALETTE[i % len(PALETTE)], f"{name}: {s.size:,} of {v:,} codes used")
        for i, (name, s, v) in enumerate(groups)
    ]
    left, right = 56.0, width - 14.0
    legend_h = _legend(entries, left, right, 0.0, opacity=1.0)[1]
    height = max(height, int(math.ceil(28 + 60 + 36 + legend_h + 6)))
    top, bottom = 28.0, height - 36.0 - legend_h - 4.0
    x_lo, x_hi = (1.0, float(vocab)) if vocab > 1 else (0.5, 1.5)

    def sx(rank: np.ndarray | float) -> np.ndarray | float:
        return left + (rank - x_lo) / (x_hi - x_lo) * (right - left)

    def sy(share: np.ndarray | float) -> np.ndarray | float:
        return bottom - (np.log10(share) - y_lo) / (y_hi - y_lo) * (bottom - top)

    parts = _svg_open(width, height, title)
    decade_step = max(1, math.ceil((y_hi - y_lo) / 6))
    for k in range(y_hi, y_lo - 1, -decade_step):
        parts += _y_tick(float(sy(10.0**k)), left, right, _fmt(10.0**k))
    x_ticks = [1.0] + [t for t in _nice_ticks(x_lo, x_hi, 6) if t == int(t) and sx(t) - sx(1.0) > 30]
    for t in x_ticks if vocab > 1 else [1.0]:
        parts += _x_tick(float(sx(t)), bottom, _fmt(t))
    parts.append(_axes(left, top, right, bottom))
    parts.append(
        _text((left + right) / 2, bottom + 29, "code rank (most used first)", anchor="middle", fill="#222222")
    )
    parts.append(
        _text(
            14,
            (top + bottom) / 2,
            "share (log)",
            anchor="middle",
            size=10,
            fill="#333333",
            extra=f'transform="rotate(-90 14 {_c((top + bottom) / 2)})"',
        )
    )

    if uniform is not None and has_values:
        y = float(sy(uniform))
        parts.append(_line(left, y, right, y, NEUTRAL_COLOUR, 'stroke-dasharray="4,3"'))
        parts.append(_text(right - 2, y - 3, "uniform 1/V", anchor="end", size=10, fill="#777777"))
    if not has_values:
        parts.append(
            _text(
                (left + right) / 2, (top + bottom) / 2, "no values", anchor="middle", size=13, fill="#888888"
            )
        )
    for i, (_, shares, _) in enumerate(groups):
        if not shares.size:
            continue
        colour = PALETTE[i % len(PALETTE)]
        idx = _downsample_indices(shares.size)
        xs = sx(idx.astype(np.float64) + 1.0)
        ys = sy(shares[idx])
        if idx.size == 1:
            parts.append(f'<circle cx="{_c(float(xs[0]))}" cy="{_c(float(ys[0]))}" r="2.5" fill="{colour}"/>')
        coords = [f"{_c(float(x))},{_c(float(y))}" for x, y in zip(xs, ys, strict=True)]
        # many ranks share a pixel column after rounding: drop exact repeats, they only add bytes
        points = " ".join(p for k, p in enumerate(coords) if k == 0 or p != coords[k - 1])
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5" '
            f'stroke-linejoin="round"/>'
        )

    parts += _legend(entries, left, right, height - legend_h + 5, opacity=1.0)[0]
    parts.append("</svg>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# A/B shift chart
# ----------------------------------------------------------------------------------------------


def _finite(v: float | None) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _value_text(v: float | None) -> str:
    return "n/a" if v is None else _fmt(float(v))


def shift_svg(
    rows: Sequence[tuple[str, float | None, float | None]],
    *,
    title: str,
    higher_is_better: Mapping[str, bool] | None = None,
    width: int = 560,
) -> str:
    """Audit A vs audit B: per row a hollow dot (A), a filled dot (B) and an arrow A -> B.

    Why a per-row scale: rows mix units (dB, MOS, ratios), so each row gets its own axis from
    min(0, a, b) to max(0, a, b). Anchoring at zero keeps the arrow length proportional to the
    relative change (4.10 -> 4.12 is a short arrow, not a full-width one); a small tick marks zero
    when it lies inside the row. Colour says whether the change is good (green) or bad (red) per
    ``higher_is_better[label.split(" · ")[0]]``; grey when unknown, unchanged or incomplete.
    """
    hib = higher_is_better or {}
    row_h, top = 22.0, 46.0
    height = int(top + max(len(rows), 1) * row_h + 10)
    label_w = min(170.0, width * 0.3)
    value_w = min(170.0, width * 0.3)
    t_left = 8.0 + label_w + 8.0
    t_right = max(t_left + 20.0, width - value_w - 12.0)
    v_left = t_right + 12.0

    parts = _svg_open(width, height, title)
    parts.append(f'<circle cx="12" cy="32" r="4" fill="#ffffff" stroke="{AXIS_COLOUR}" stroke-width="1.5"/>')
    parts.append(_text(20, 35.5, "A", fill="#333333"))
    parts.append(
        f'<circle cx="42" cy="32" r="4" fill="{NEUTRAL_COLOUR}" stroke="{AXIS_COLOUR}" stroke-width="1"/>'
    )
    parts.append(_text(50, 35.5, "B", fill="#333333"))
    parts.append(
        _text(72, 35.5, "green: better, red: worse, grey: unknown or unchanged", size=10, fill="#666666")
    )
    if not rows:
        parts.append(_text(width / 2, top + 14, "no rows", anchor="middle", size=13, fill="#888888"))

    max_chars = max(4, int(label_w / _CHAR_W))
    for i, (label, a_raw, b_raw) in enumerate(rows):
        label = str(label)
        a, b = _finite(a_raw), _finite(b_raw)
        y = top + i * row_h + row_h / 2
        metric = label.split(" \u00b7 ")[0]
        colour, verdict = NEUTRAL_COLOUR, "unknown"
        if a is not None and b is not None:
            if b == a:
                verdict = "unchanged"
            elif metric in hib:
                better = (b > a) == bool(hib[metric])
                colour, verdict = (IMPROVED_COLOUR, "better") if better else (REGRESSED_COLOUR, "worse")
        a_s, b_s = _value_text(a_raw), _value_text(b_raw)
        shown = label if len(label) <= max_chars else label[: max_chars - 1] + "\u2026"

        parts.append("<g>")
        tooltip = f"{label}: {a_s} \u2192 {b_s} ({verdict})"
        parts.append(f"<title>{_esc(tooltip)}</title>")
        if i % 2 == 0:
            parts.append(
                f'<rect x="0" y="{_c(y - row_h / 2)}" width="{width}" height="{_c(row_h)}" fill="#f6f6f6"/>'
            )
        parts.append(_text(8, y + 4, shown, fill="#222222"))
        parts.append(_line(t_left, y, t_right, y, "#dddddd"))

        present = [v for v in (a, b) if v is not None]
        if present:
            lo, hi = min(0.0, *present), max(0.0, *present)

            def pos(v: float, lo: float = lo, hi: float = hi) -> float:
                if hi == lo:
                    return (t_left + t_right) / 2
                return t_left + (v - lo) / (hi - lo) * (t_right - t_left)

            if lo < 0 < hi:
                z = pos(0.0)
                parts.append(_line(z, y - 5, z, y + 5, "#bbbbbb"))
            if a is not None and b is not None:
                xa, xb = pos(a), pos(b)
                dist = abs(xb - xa)
                if dist >= 1.0:
                    head = min(7.0, dist)
                    direction = 1.0 if xb > xa else -1.0
                    base = xb - direction * head
                    parts.append(_line(xa, y, base, y, colour, 'stroke-width="2"'))
                    parts.append(
                        f'<polygon points="{_c(xb)},{_c(y)} {_c(base)},{_c(y - 4)} '
                        f'{_c(base)},{_c(y + 4)}" fill="{colour}"/>'
                    )
            if a is not None:
                parts.append(
                    f'<circle cx="{_c(pos(a))}" cy="{_c(y)}" r="4" fill="#ffffff" '
                    f'stroke="{AXIS_COLOUR}" stroke-width="1.5"/>'
                )
            if b is not None:
                # B takes the verdict colour too: with a small change the arrow hides under the dots.
                parts.append(
                    f'<circle cx="{_c(pos(b))}" cy="{_c(y)}" r="4" fill="{colour}" '
                    f'stroke="{AXIS_COLOUR}" stroke-width="1"/>'
                )

        value = f"{a_s} \u2192 {b_s}"
        delta = ""
        if a is not None and b is not None:
            delta = f"({'+' if b - a > 0 else ''}{_fmt(b - a)})"
        # dx, not a space: renderers strip whitespace at tspan boundaries
        parts.append(
            f'<text x="{_c(v_left)}" y="{_c(y + 4)}" fill="#222222">{_esc(value)}'
            + (f'<tspan dx="4" fill="{colour}">{_esc(delta)}</tspan>' if delta else "")
            + "</text>"
        )
        parts.append("</g>")

    parts.append("</svg>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# Spectrogram PNG
# ----------------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode a uint8 [H, W, 3] array as an 8-bit RGB PNG (no filtering: small images, simple code)."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
    h, w = int(arr.shape[0]), int(arr.shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"image must be at least 1x1, got {w}x{h}")
    raw = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # column 0: filter type 0 (None) per row
    raw[:, 1:] = arr.reshape(h, 3 * w)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit, truecolour, deflate, no interlace
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _png_chunk(b"IEND", b"")
    )


def read_png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR; ValueError if it is not a PNG."""
    if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG (bad signature or missing IHDR)")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _bin_mean(a: np.ndarray, n_out: int) -> np.ndarray:
    """Resize axis 0 to n_out rows: mean of contiguous groups when shrinking, repeat when growing."""
    n_in = a.shape[0]
    if n_out == n_in:
        return a
    if n_out > n_in:
        return a[(np.arange(n_out) * n_in) // n_out]
    group = (np.arange(n_in) * n_out) // n_in
    starts = np.searchsorted(group, np.arange(n_out))
    counts = np.diff(np.append(starts, n_in))
    return np.add.reduceat(a, starts, axis=0) / counts[:, None]


def _colormap(levels: np.ndarray) -> np.ndarray:
    """[0, 1] levels -> uint8 RGB by piecewise-linear interpolation between the anchors."""
    anchors = np.asarray(COLORMAP_ANCHORS, dtype=np.float64)
    pos = np.linspace(0.0, 1.0, len(anchors))
    out = np.empty((*levels.shape, 3), dtype=np.uint8)
    for ch in range(3):
        out[..., ch] = np.clip(np.rint(np.interp(levels, pos, anchors[:, ch])), 0, 255).astype(np.uint8)
    return out


def spectrogram_png(
    samples: np.ndarray,
    *,
    sample_rate: int = 16000,
    n_fft: int = 512,
    hop: int = 160,
    db_range: float = 80.0,
    max_width: int = 1200,
    height: int | None = None,
) -> bytes:
    """Log-magnitude spectrogram of a mono clip as a PNG (low frequencies at the bottom).

    Frames: periodic Hann window of ``n_fft``, hop ``hop``, no centring; the end is zero-padded
    so the tail is covered: ``n_frames = 1 + ceil(max(0, len - n_fft) / hop)`` (a clip shorter
    than ``n_fft`` is one zero-padded frame). Width is ``min(n_frames, max_width)``: frames are
    averaged (as power) into columns, so long clips stay a bounded size in the HTML. Height is
    ``n_fft // 2 + 1`` (row r from the bottom is r * sample_rate / n_fft Hz) unless ``height``
    is given (bins averaged or repeated). Levels are dB relative to the clip's loudest cell,
    clipped to [-db_range, 0]; all-zero input is a uniformly dark image. NaN/inf samples are
    treated as silence so a broken clip still renders (its metrics report the breakage).
    """
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"samples must be 1-D, got shape {x.shape}")
    if x.size == 0:
        raise ValueError("samples is empty")
    if sample_rate <= 0 or n_fft < 2 or hop < 1 or max_width < 1 or not db_range > 0:
        raise ValueError("need sample_rate > 0, n_fft >= 2, hop >= 1, max_width >= 1, db_range > 0")
    if height is not None and height < 1:
        raise ValueError(f"height must be >= 1, got {height}")
    n_bins = n_fft // 2 + 1
    n_frames = 1 + (max(0, x.size - n_fft) + hop - 1) // hop
    buf = np.zeros(n_fft + (n_frames - 1) * hop)  # the one full-length copy (zero-padded tail)
    buf[: x.size] = x
    np.nan_to_num(buf, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    peak = max(float(buf.max()), -float(buf.min()))  # not np.abs(buf): no second full-length array
    if peak > 0:
        buf /= peak  # scale-invariant (dB is relative to the max), and no overflow when squaring
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(buf, n_fft)[::hop]
    n_cols = min(n_frames, max_width)
    col_of_frame = (np.arange(n_frames) * n_cols) // n_frames
    acc = np.zeros((n_cols, n_bins))
    chunk = max(1, (1 << 21) // n_fft)  # bounded memory for long clips
    for start in range(0, n_frames, chunk):
        power = np.abs(np.fft.rfft(frames[start : start + chunk] * window, axis=1)) ** 2
        cols = col_of_frame[start : start + chunk]
        firsts = np.flatnonzero(np.diff(cols, prepend=-1))
        acc[cols[firsts]] += np.add.reduceat(power, firsts, axis=0)
    power = acc / np.bincount(col_of_frame, minlength=n_cols)[:, None]

    img = _bin_mean(power.T, height if height is not None else n_bins)[::-1]  # [rows, cols], low at bottom
    ref = float(img.max())
    if ref > 0:
        with np.errstate(divide="ignore"):
            db = 10.0 * np.log10(np.maximum(img, ref * 10.0 ** (-db_range / 10.0)) / ref)
        levels = np.clip(1.0 + db / db_range, 0.0, 1.0)
    else:
        levels = np.zeros_like(img)
    return png_bytes(_colormap(levels))
