"""Report pictures: SVGs parse and carry escaped user text; PNG is valid and shows the right content."""

from __future__ import annotations

import math
import struct
import xml.etree.ElementTree as ET
import zlib

import numpy as np
import pytest

from pipeline.audit.plots import (
    IMPROVED_COLOUR,
    MAX_POLYLINE_POINTS,
    NEUTRAL_COLOUR,
    PNG_SIGNATURE,
    REGRESSED_COLOUR,
    Reference,
    histogram_svg,
    png_bytes,
    rank_frequency_svg,
    read_png_size,
    shift_svg,
    spectrogram_png,
)

SVG = "{http://www.w3.org/2000/svg}"
NASTY = "a<b & \"c\" > 'd'"


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    w, h = int(root.get("width")), int(root.get("height"))
    assert root.get("viewBox") == f"0 0 {w} {h}"
    return root


def _texts(root: ET.Element) -> list[str]:
    """Every text node's full content (including tspans), as a reader of the picture sees it."""
    return ["".join(el.itertext()) for el in root.iter() if el.tag in (f"{SVG}text", f"{SVG}title")]


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (type, data), checking every CRC on the way."""
    assert data[:8] == PNG_SIGNATURE
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    return chunks


def _decode_png(data: bytes) -> np.ndarray:
    """Our PNGs only: 8-bit RGB, filter 0 rows -> uint8 [H, W, 3]."""
    chunks = _png_chunks(data)
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    w, h, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, comp, filt, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(chunks[1][1])
    assert len(raw) == h * (1 + 3 * w)
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, 1 + 3 * w)
    assert np.all(rows[:, 0] == 0)  # filter byte: None
    return rows[:, 1:].reshape(h, w, 3)


# ----------------------------------------------------------------------------------------------
# histogram_svg
# ----------------------------------------------------------------------------------------------


def test_histogram_escapes_names_and_shows_references_and_legend():
    rng = np.random.default_rng(0)
    svg = histogram_svg(
        {"speech": rng.normal(4.0, 0.3, 200), NASTY: [3.0, 3.5, float("nan"), float("inf")]},
        title="ViSQOL <speech & music>",
        x_label="MOS-LQO",
        references=[Reference(4.6, "SemantiCodec paper, Table 2, 50 tok/s")],
        higher_is_better=True,
    )
    root = _parse(svg)
    texts = _texts(root)
    assert any(NASTY in t for t in texts), "group name must survive escaping"
    assert any(t.startswith(f"{NASTY} (n=2, 2 non-finite)") for t in texts)
    assert any(t.startswith("speech (n=200)") for t in texts)
    assert any("SemantiCodec paper, Table 2, 50 tok/s" in t for t in texts)
    assert any("ViSQOL <speech & music>" == t for t in texts)
    assert any("higher is better" in t for t in texts)
    # one filled path per group, in distinct colours
    fills = [p.get("fill") for p in root.iter(f"{SVG}path") if p.get("fill-opacity")]
    assert len(fills) == 2 and len(set(fills)) == 2


def test_histogram_x_range_includes_references():
    # data in [0, 1], reference at 10: the dashed line must lie inside the plot, right of the data
    svg = histogram_svg(
        {"g": np.linspace(0, 1, 50)},
        title="t",
        x_label="x",
        references=[Reference(10.0, "paper")],
        higher_is_better=False,
    )
    root = _parse(svg)
    dashed = [ln for ln in root.iter(f"{SVG}line") if ln.get("stroke-dasharray") == "5,3"]
    assert len(dashed) == 1
    x_ref = float(dashed[0].get("x1"))
    width = int(root.get("width"))
    path = next(p for p in root.iter(f"{SVG}path") if p.get("fill-opacity"))
    xs = [float(tok.lstrip("MLZ").split(",")[0]) for tok in path.get("d").split() if "," in tok]
    assert max(xs) < x_ref < width
    assert any("lower is better" in t for t in _texts(root))
    tick_labels = _texts(root)
    assert "10" in tick_labels and "0" in tick_labels


def test_histogram_bins_share_normalised_per_group():
    # group a: all in the lowest bin; group b: split evenly between the lowest and highest bin
    svg = histogram_svg({"a": [0.0] * 10, "b": [0.0] * 3 + [1.0] * 3}, title="t", x_label="x", bins=4)
    root = _parse(svg)
    paths = [p for p in root.iter(f"{SVG}path") if p.get("fill-opacity")]
    heights = []
    for p in paths:
        ys = [float(tok.lstrip("MLZ").split(",")[1]) for tok in p.get("d").split() if "," in tok]
        heights.append(max(ys) - min(ys))
    # a's tallest bar is 100%, b's is 50%: twice as tall
    assert heights[0] == pytest.approx(2 * heights[1], rel=0.02)


def test_histogram_no_finite_values_and_constant_values():
    root = _parse(histogram_svg({"g": [float("nan"), float("inf")], "h": []}, title="t", x_label="x"))
    texts = _texts(root)
    assert "no values" in texts
    assert any(t.startswith("g (n=0, 2 non-finite)") for t in texts)
    assert not [p for p in root.iter(f"{SVG}path") if p.get("fill-opacity")]

    root = _parse(histogram_svg({}, title="empty", x_label="x"))
    assert "no values" in _texts(root)

    # all equal: a small range around the value, one full-height bar, no crash
    root = _parse(histogram_svg({"g": [2.0, 2.0, 2.0]}, title="t", x_label="x"))
    assert "no values" not in _texts(root)
    assert len([p for p in root.iter(f"{SVG}path") if p.get("fill-opacity")]) == 1


def test_histogram_bad_bins():
    with pytest.raises(ValueError):
        histogram_svg({"g": [1.0]}, title="t", x_label="x", bins=0)


# ----------------------------------------------------------------------------------------------
# rank_frequency_svg
# ----------------------------------------------------------------------------------------------


def _polyline_points(poly: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in poly.get("points").split()]


def test_rank_frequency_downsamples_large_vocab_and_reports_usage():
    rng = np.random.default_rng(1)
    vocab = 32768
    full = rng.integers(1, 1000, vocab)  # every code used
    partial = np.zeros(vocab, dtype=np.int64)
    partial[rng.choice(vocab, 500, replace=False)] = rng.integers(1, 50, 500)
    root = _parse(rank_frequency_svg({"semantic": full, NASTY: partial}, title="usage"))
    polys = list(root.iter(f"{SVG}polyline"))
    assert len(polys) == 2
    pts_full, pts_partial = (_polyline_points(p) for p in polys)
    assert 2 <= len(pts_full) <= MAX_POLYLINE_POINTS
    assert 2 <= len(pts_partial) <= 500
    # shape: x increasing (rank), y non-decreasing in SVG coordinates (share sorted descending)
    for pts in (pts_full, pts_partial):
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        assert all(b >= a for a, b in zip(xs, xs[1:], strict=False)) and xs[-1] > xs[0]
        assert all(b >= a for a, b in zip(ys, ys[1:], strict=False))
        assert len(set(pts)) == len(pts)  # no repeated points
    # the last used rank is kept: both lines start at rank 1 and end at rank 32768 and 500 respectively
    assert pts_full[0][0] == pts_partial[0][0]
    span_full, span_partial = pts_full[-1][0] - pts_full[0][0], pts_partial[-1][0] - pts_partial[0][0]
    assert span_partial / span_full == pytest.approx(499 / 32767, abs=0.002)
    texts = _texts(root)
    assert "semantic: 32,768 of 32,768 codes used" in texts
    assert f"{NASTY}: 500 of 32,768 codes used" in texts


def test_rank_frequency_log_axis_positions():
    # shares 0.9, 0.09, 0.01 (codes 3 and 4 unused): three points, log-spaced y
    counts = np.array([90, 0, 9, 1, 0])
    root = _parse(rank_frequency_svg({"g": counts}, title="t"))
    (poly,) = root.iter(f"{SVG}polyline")
    ys = [p[1] for p in _polyline_points(poly)]
    assert len(ys) == 3
    # log10(0.9) - log10(0.09) = 1 decade; log10(0.09) - log10(0.01) = 0.954 decade
    assert (ys[2] - ys[1]) / (ys[1] - ys[0]) == pytest.approx(math.log10(9), abs=0.02)
    assert "g: 3 of 5 codes used" in _texts(root)


def test_rank_frequency_empty_and_invalid():
    root = _parse(rank_frequency_svg({"g": np.zeros(16)}, title="t"))
    assert "no values" in _texts(root)
    assert not list(root.iter(f"{SVG}polyline"))
    with pytest.raises(ValueError):
        rank_frequency_svg({"g": np.array([1, -1])}, title="t")


# ----------------------------------------------------------------------------------------------
# shift_svg
# ----------------------------------------------------------------------------------------------


def _arrow_colours(root: ET.Element) -> list[str]:
    return [p.get("fill") for p in root.iter(f"{SVG}polygon")]


def test_shift_colours_follow_direction():
    rows = [
        ("visqol · speech", 2.0, 4.0),  # up, higher better -> improvement
        ("log_mel_distance · music", 0.5, 1.0),  # up, lower better -> regression
        ("mystery · sound", 1.0, 3.0),  # unknown direction -> grey
        ("stoi · speech", 0.9, 0.9),  # unchanged -> no arrow
        (NASTY, None, 3.0),  # missing A
    ]
    root = _parse(
        shift_svg(
            rows, title="A vs B", higher_is_better={"visqol": True, "log_mel_distance": False, "stoi": True}
        )
    )
    assert _arrow_colours(root) == [IMPROVED_COLOUR, REGRESSED_COLOUR, NEUTRAL_COLOUR]
    texts = _texts(root)
    assert "2 \u2192 4(+2)" in texts
    assert "0.5 \u2192 1(+0.5)" in texts
    assert "n/a \u2192 3" in texts
    assert any(NASTY in t for t in texts)
    # improvement arrow points right (B at 4 is right of A at 2 on the same row scale)
    first = next(root.iter(f"{SVG}polygon"))
    tip_x = float(first.get("points").split()[0].split(",")[0])
    base_x = float(first.get("points").split()[1].split(",")[0])
    assert tip_x > base_x


def test_shift_downward_improvement_and_empty():
    root = _parse(
        shift_svg(
            [("si_sdr · speech", 5.0, -3.0), ("loudness_diff_db", 2.0, 1.0)],
            title="t",
            higher_is_better={"si_sdr": True, "loudness_diff_db": False},
        )
    )
    assert _arrow_colours(root) == [REGRESSED_COLOUR, IMPROVED_COLOUR]
    assert "5 \u2192 -3(-8)" in _texts(root)
    assert "no rows" in _texts(_parse(shift_svg([], title="t")))


# ----------------------------------------------------------------------------------------------
# PNG encoder and spectrogram
# ----------------------------------------------------------------------------------------------


def test_png_roundtrip_and_size():
    rgb = np.random.default_rng(2).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    data = png_bytes(rgb)
    assert read_png_size(data) == (5, 7)
    np.testing.assert_array_equal(_decode_png(data), rgb)
    with pytest.raises(ValueError):
        read_png_size(b"GIF89a" + data[6:])
    with pytest.raises(ValueError):
        png_bytes(rgb.astype(np.float32))
    with pytest.raises(ValueError):
        png_bytes(rgb[:, :, :2])


def _tone(freq: float, seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_spectrogram_size_and_tone_row():
    x = _tone(1000.0, 2.0)
    n_frames = 1 + math.ceil((32000 - 512) / 160)  # 198
    data = spectrogram_png(x)
    assert read_png_size(data) == (min(n_frames, 1200), 257)
    img = _decode_png(data)
    brightness = img.astype(np.int64).sum(axis=(1, 2))
    # 1 kHz = bin 1000 * 512 / 16000 = 32, counted from the bottom row
    assert int(np.argmax(brightness)) == 256 - 32
    # the tone is the loudest cell: its row reaches the colormap's brightest colour
    assert img[256 - 32].astype(int).sum() > 3 * img[10].astype(int).sum()


def test_spectrogram_width_cap_and_height_option():
    x = _tone(4000.0, 2.0)
    data = spectrogram_png(x, max_width=50, height=65)
    assert read_png_size(data) == (50, 65)
    img = _decode_png(data)
    brightness = img.astype(np.int64).sum(axis=(1, 2))
    # 4 kHz = bin 128 of 257 -> row 128 * 65 // 257 = 32 from the bottom
    assert int(np.argmax(brightness)) == 64 - 32


def test_spectrogram_silence_short_and_empty():
    data = spectrogram_png(np.zeros(16000))
    img = _decode_png(data)
    assert img.shape == (257, 1 + math.ceil((16000 - 512) / 160), 3)
    assert np.all(img == img[0, 0])  # uniformly the darkest colour
    assert int(img[0, 0].astype(int).sum()) < 30

    short = _decode_png(spectrogram_png(np.ones(100, dtype=np.float32)))
    assert short.shape == (257, 1, 3)

    with_nan = np.r_[_tone(1000.0, 0.5), np.full(10, np.nan)]
    assert read_png_size(spectrogram_png(with_nan))[1] == 257

    with pytest.raises(ValueError):
        spectrogram_png(np.zeros(0))
    with pytest.raises(ValueError):
        spectrogram_png(np.zeros((2, 100)))
