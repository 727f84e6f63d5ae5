"""Report charts and spectrograms: what each chart draws (read back from the matplotlib figure), that
the SVG parses and shows user text as written, and that the spectrogram puts a tone on its row."""

from __future__ import annotations

import base64
import io
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from matplotlib.colors import same_color
from matplotlib.figure import Figure
from PIL import Image

from pipeline.audit.plots import (
    IMPROVED_COLOUR,
    MAX_LINE_POINTS,
    NEUTRAL_COLOUR,
    REGRESSED_COLOUR,
    Reference,
    figure_svg,
    histogram_figure,
    histogram_svg,
    rank_frequency_figure,
    rank_frequency_svg,
    shift_figure,
    shift_svg,
    spectrogram_levels,
    spectrogram_png,
    svg_data_uri,
)

SVG = "{http://www.w3.org/2000/svg}"
# markup, quotes, a mathtext pair, and a control character (from an undecodable file name)
NASTY = "a<b & \"c\" > 'd' $x$\x01"
NASTY_SHOWN = NASTY.replace("\x01", "\ufffd")


def _svg_texts(svg: str) -> list[str]:
    """Every text element's content in the SVG, as a reader of the picture sees it."""
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return ["".join(el.itertext()) for el in root.iter(f"{SVG}text")]


def _legend_texts(fig: Figure) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def _group_patches(fig: Figure) -> list:
    return [p for p in fig.axes[0].patches if (p.get_gid() or "").startswith("group-")]


# ----------------------------------------------------------------------------------------------
# histogram
# ----------------------------------------------------------------------------------------------


def test_histogram_svg_shows_user_text_as_written():
    rng = np.random.default_rng(0)
    svg = histogram_svg(
        {"speech": rng.normal(4.0, 0.3, 200), NASTY: [3.0, 3.5, float("nan"), float("inf")]},
        title="ViSQOL <speech & music>",
        x_label="MOS-LQO",
        references=[Reference(4.6, "SemantiCodec paper, Table 2, 50 tok/s")],
        higher_is_better=True,
    )
    texts = _svg_texts(svg)  # parses: markup escaped, the control character replaced
    assert f"{NASTY_SHOWN} (n=2, 2 non-finite)" in texts  # the $x$ pair stays text, not mathtext
    assert "speech (n=200)" in texts
    assert "SemantiCodec paper, Table 2, 50 tok/s (4.6)" in texts
    assert "ViSQOL <speech & music>" in texts
    assert "\u2191 higher is better" in texts
    assert "dc:date" not in svg  # reproducible


def test_histogram_one_filled_outline_per_group_in_distinct_colours():
    rng = np.random.default_rng(1)
    fig = histogram_figure(
        {"speech": rng.normal(4.0, 0.3, 200), "music": rng.normal(3.0, 0.3, 50)}, title="t", x_label="x"
    )
    patches = _group_patches(fig)
    assert len(patches) == 2
    assert not same_color(patches[0].get_edgecolor(), patches[1].get_edgecolor())
    assert fig.axes[0].get_title(loc="right") == ""  # no direction given, none claimed


def test_histogram_x_range_includes_references():
    # data in [0, 1], reference at 10: the dashed line lies inside the plot, right of the data
    fig = histogram_figure(
        {"g": np.linspace(0, 1, 50)},
        title="t",
        x_label="x",
        references=[Reference(10.0, "paper")],
        higher_is_better=False,
    )
    ax = fig.axes[0]
    [ref] = [line for line in ax.lines if (line.get_gid() or "").startswith("reference-")]
    assert list(ref.get_xdata()) == [10.0, 10.0]
    assert ref.get_linestyle() == "--"
    [patch] = _group_patches(fig)
    lo, hi = ax.get_xlim()
    assert lo < 0.0 and patch.get_xy()[:, 0].max() == pytest.approx(1.0) and 10.0 < hi
    assert ax.get_title(loc="right") == "\u2193 lower is better"
    assert "paper (10)" in _legend_texts(fig)


def test_histogram_bins_share_normalised_per_group():
    # group a: all in the lowest bin; group b: split evenly between the lowest and highest bin
    fig = histogram_figure({"a": [0.0] * 10, "b": [0.0] * 3 + [1.0] * 3}, title="t", x_label="x", bins=4)
    tops = [float(p.get_xy()[:, 1].max()) for p in _group_patches(fig)]
    assert tops == pytest.approx([1.0, 0.5])  # shares of each group, not counts


def test_histogram_no_finite_values_and_constant_values():
    fig = histogram_figure({"g": [float("nan"), float("inf")], "h": []}, title="t", x_label="x")
    assert "no values" in [t.get_text() for t in fig.axes[0].texts]
    assert "g (n=0, 2 non-finite)" in _legend_texts(fig) and "h (n=0)" in _legend_texts(fig)
    assert _group_patches(fig) == []

    assert "no values" in _svg_texts(histogram_svg({}, title="empty", x_label="x"))

    # all equal: a small range around the value, one full-height bar, no crash
    fig = histogram_figure({"g": [2.0, 2.0, 2.0]}, title="t", x_label="x")
    [patch] = _group_patches(fig)
    assert float(patch.get_xy()[:, 1].max()) == pytest.approx(1.0)
    lo, hi = fig.axes[0].get_xlim()
    assert lo < 2.0 < hi


def test_histogram_bad_bins():
    with pytest.raises(ValueError):
        histogram_figure({"g": [1.0]}, title="t", x_label="x", bins=0)


def test_svg_is_reproducible_and_travels_as_a_data_uri():
    values = {"g": np.linspace(0, 1, 30)}
    svg = histogram_svg(values, title="t", x_label="x")
    assert svg == histogram_svg(values, title="t", x_label="x")
    uri = svg_data_uri(svg)
    assert uri.startswith("data:image/svg+xml;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]).decode("utf-8") == svg


def test_legend_grows_the_figure_not_squeezes_the_plot():
    few = histogram_figure({"a": [1.0, 2.0]}, title="t", x_label="x")
    many = histogram_figure({f"source number {i}": [1.0, 2.0] for i in range(9)}, title="t", x_label="x")
    assert many.get_figheight() > few.get_figheight()
    assert many.get_figwidth() == few.get_figwidth()


# ----------------------------------------------------------------------------------------------
# rank_frequency
# ----------------------------------------------------------------------------------------------


def _group_lines(fig: Figure) -> list:
    return [line for line in fig.axes[0].lines if (line.get_gid() or "").startswith("group-")]


def test_rank_frequency_downsamples_large_vocab_and_reports_usage():
    rng = np.random.default_rng(1)
    vocab = 32768
    full = rng.integers(1, 1000, vocab)  # every code used
    partial = np.zeros(vocab, dtype=np.int64)
    partial[rng.choice(vocab, 500, replace=False)] = rng.integers(1, 50, 500)
    fig = rank_frequency_figure({"semantic": full, NASTY: partial}, title="usage")
    line_full, line_partial = _group_lines(fig)
    assert 2 <= len(line_full.get_xdata()) <= MAX_LINE_POINTS
    assert len(line_partial.get_xdata()) == 500
    for line, last_rank, counts in ((line_full, vocab, full), (line_partial, 500, partial)):
        ranks, shares = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        assert ranks[0] == 1 and ranks[-1] == last_rank  # first and last used rank kept
        assert np.all(np.diff(ranks) > 0) and np.all(np.diff(shares) <= 0)  # sorted by share
        assert shares[0] == pytest.approx(counts.max() / counts.sum())
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_xlim() == (1.0, float(vocab))
    legend = _legend_texts(fig)
    assert "semantic: 32,768 of 32,768 codes used" in legend
    assert f"{NASTY_SHOWN}: 500 of 32,768 codes used" in legend
    assert "uniform 1/V" in legend
    assert f"{NASTY_SHOWN}: 500 of 32,768 codes used" in _svg_texts(figure_svg(fig))


def test_rank_frequency_values_and_decade_axis():
    # shares 0.9, 0.09, 0.01 (codes 3 and 4 unused): three points
    fig = rank_frequency_figure({"g": np.array([90, 0, 9, 1, 0])}, title="t")
    [line] = _group_lines(fig)
    assert list(line.get_xdata()) == [1, 2, 3]
    assert list(line.get_ydata()) == pytest.approx([0.9, 0.09, 0.01])
    assert fig.axes[0].get_ylim() == pytest.approx((0.01, 1.0))  # whole decades around data and 1/V
    assert "g: 3 of 5 codes used" in _legend_texts(fig)
    # tick labels are plain numbers (mathtext is off, so 10^x labels would show as markup)
    assert "0.1" in _svg_texts(figure_svg(fig))


def test_rank_frequency_empty_and_invalid():
    fig = rank_frequency_figure({"g": np.zeros(16)}, title="t")
    assert "no values" in [t.get_text() for t in fig.axes[0].texts]
    assert _group_lines(fig) == []
    assert "g: 0 of 16 codes used" in _svg_texts(figure_svg(fig))
    with pytest.raises(ValueError):
        rank_frequency_svg({"g": np.array([1, -1])}, title="t")
    with pytest.raises(ValueError):
        rank_frequency_svg({"g": np.ones((2, 2))}, title="t")


# ----------------------------------------------------------------------------------------------
# shift
# ----------------------------------------------------------------------------------------------


def _arrows(fig: Figure) -> list:
    """(verdict, colour, tip x, tail x) of each arrow, top row first."""
    found = []
    for text in fig.axes[0].texts:
        gid = text.get_gid() or ""
        if gid.startswith("arrow-"):
            found.append((gid.rsplit("-", 1)[1], text.arrow_patch.get_facecolor(), text.xy[0], text.xyann[0]))
    return found


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.axes[0].texts]


def test_shift_colours_follow_direction():
    rows = [
        ("visqol · speech", 2.0, 4.0),  # up, higher better -> improvement
        ("log_mel_distance · music", 0.5, 1.0),  # up, lower better -> regression
        ("mystery · sound", 1.0, 3.0),  # unknown direction -> grey
        ("stoi · speech", 0.9, 0.9),  # unchanged -> no arrow
        (NASTY, None, 3.0),  # missing A
    ]
    fig = shift_figure(
        rows, title="A vs B", higher_is_better={"visqol": True, "log_mel_distance": False, "stoi": True}
    )
    arrows = _arrows(fig)
    assert [a[0] for a in arrows] == ["better", "worse", "unknown"]
    for (_, colour, _, _), expected in zip(
        arrows, [IMPROVED_COLOUR, REGRESSED_COLOUR, NEUTRAL_COLOUR], strict=True
    ):
        assert same_color(colour, expected)
    tip, tail = arrows[0][2], arrows[0][3]
    assert tip > tail  # B at 4 lies right of A at 2 on the row's own scale
    texts = _texts(fig)
    for shown in ("2 \u2192 4", "(+2)", "0.5 \u2192 1", "(+0.5)", "0.9 \u2192 0.9", "(0)", "n/a \u2192 3"):
        assert shown in texts
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == "visqol · speech" and labels[-1] == NASTY_SHOWN
    svg_texts = _svg_texts(figure_svg(fig))
    assert NASTY_SHOWN in svg_texts and "2 \u2192 4" in svg_texts


def test_shift_downward_improvement_long_labels_and_empty():
    long_label = "si_sdr · source:" + "x" * 80
    fig = shift_figure(
        [(long_label, 5.0, -3.0), ("loudness_diff_db", 2.0, 1.0)],
        title="t",
        higher_is_better={"si_sdr": True, "loudness_diff_db": False},
    )
    assert [a[0] for a in _arrows(fig)] == ["worse", "better"]
    assert "(-8)" in _texts(fig) and "5 \u2192 -3" in _texts(fig)
    label = fig.axes[0].get_yticklabels()[0].get_text()
    assert label.endswith("\u2026") and len(label) == 40
    assert "no rows" in _svg_texts(shift_svg([], title="t"))


# ----------------------------------------------------------------------------------------------
# spectrogram
# ----------------------------------------------------------------------------------------------


def _tone(freq: float, seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def test_spectrogram_size_and_tone_row():
    x = _tone(1000.0, 2.0)
    n_frames = 1 + math.ceil((32000 - 512) / 160)  # 198
    levels = spectrogram_levels(x)
    assert levels.shape == (257, n_frames)
    assert levels.min() >= 0.0 and levels.max() == 1.0
    # 1 kHz = bin 1000 * 512 / 16000 = 32
    assert int(np.argmax(levels.mean(axis=1))) == 32
    img = _png(spectrogram_png(x))
    assert img.shape == (257, n_frames, 3)
    brightness = img.astype(np.int64).sum(axis=(1, 2))
    assert int(np.argmax(brightness)) == 256 - 32  # low frequencies at the bottom
    assert img[256 - 32].astype(int).sum() > 3 * img[10].astype(int).sum()


def test_spectrogram_frames_are_hann_windows_from_sample_zero():
    # one impulse at sample 600: frames 1..3 (starting at 160, 320, 480) contain it, frame 0 does not
    x = np.zeros(1200)
    x[600] = 1.0
    levels = spectrogram_levels(x, max_width=10_000)
    assert levels.shape[1] == 1 + math.ceil((1200 - 512) / 160)
    energy = levels.mean(axis=0)
    assert energy[0] == 0.0 and np.all(energy[1:4] > 0) and energy[4] == 0.0
    # the Hann window weights the impulse by its position in each frame: the frame that has it
    # nearest its centre (frame 2, starting at 320: offset 280 of 512) is the loudest
    assert int(np.argmax(energy)) == 2


def test_spectrogram_width_cap():
    x = _tone(4000.0, 2.0)
    levels = spectrogram_levels(x, max_width=50)
    assert levels.shape == (257, 50)
    assert int(np.argmax(levels.mean(axis=1))) == 128  # 4 kHz = bin 128 of 257
    assert _png(spectrogram_png(x, max_width=50)).shape == (257, 50, 3)


def test_spectrogram_silence_short_and_broken():
    silent = _png(spectrogram_png(np.zeros(16000)))
    assert silent.shape == (257, 1 + math.ceil((16000 - 512) / 160), 3)
    assert np.all(silent == silent[0, 0])  # uniformly the darkest colour
    assert int(silent[0, 0].astype(int).sum()) < 30

    assert spectrogram_levels(np.ones(100, dtype=np.float32)).shape == (257, 1)

    with_nan = np.r_[_tone(1000.0, 0.5), np.full(10, np.nan), np.full(3, np.inf)]
    levels = spectrogram_levels(with_nan)
    assert np.all(np.isfinite(levels)) and levels.shape[0] == 257

    with pytest.raises(ValueError):
        spectrogram_levels(np.zeros(0))
    with pytest.raises(ValueError):
        spectrogram_levels(np.zeros((2, 100)))
    with pytest.raises(ValueError):
        spectrogram_levels(np.zeros(100), hop=0)
