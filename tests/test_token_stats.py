"""Token statistics: hand-computed figures, merge == one pass, per-group split, pyarrow reader."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from pipeline.audit.token_stats import TokenStats, codebook_summary, read_token_stats

VOCABS = (8, 16)


def _table(rows: list[dict]) -> pa.Table:
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("semantic_tokens", pa.list_(pa.uint16())),
            ("acoustic_tokens", pa.list_(pa.uint16())),
            ("n_frames", pa.int32()),
            ("duration_s", pa.float64()),
            ("source_uri", pa.string()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _random_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        frames = int(rng.integers(0, 40))
        rows.append(
            {
                "id": f"item{i}",
                "semantic_tokens": rng.integers(0, VOCABS[0], frames).tolist(),
                # skewed usage so some acoustic codes stay dead
                "acoustic_tokens": (rng.integers(0, 4, frames) * 3).tolist(),
                "n_frames": frames,
                "duration_s": frames / 25.0,
                "source_uri": f"s3://bucket/{'a' if i % 3 else 'b'}/f{i}.wav",
            }
        )
    return rows


def test_hand_computed_entropy_perplexity_dead_share():
    # counts [2, 1, 1, 0, ...]: p = (1/2, 1/4, 1/4) -> H = 1.5 bits, perplexity 2**1.5.
    stats = TokenStats(VOCABS)
    stats.add(np.array([0, 0, 1, 2], np.uint16), np.array([5, 5, 5, 5], np.uint16), duration_s=0.5)
    s = stats.summary()["overall"]
    sem, ac = s["codebooks"]["semantic"], s["codebooks"]["acoustic"]
    assert sem["entropy_bits"] == pytest.approx(1.5)
    assert sem["perplexity"] == pytest.approx(2**1.5)
    assert sem["used_codes"] == 3 and sem["dead_code_share"] == pytest.approx(5 / 8)
    assert ac["entropy_bits"] == 0.0 and ac["perplexity"] == 1.0  # one code only
    assert ac["dead_code_share"] == pytest.approx(15 / 16)
    assert sem["max_entropy_bits"] == 3.0
    assert s["n_items"] == 1 and s["n_frames"] == 4 and s["tokens_per_second"] == pytest.approx(8.0)
    np.testing.assert_array_equal(stats.histogram("semantic")[:4], [2, 1, 1, 0])


def test_uniform_usage_reaches_max_entropy_and_empty_is_defined():
    full = codebook_summary(np.full(16, 3))
    assert full["entropy_bits"] == pytest.approx(4.0) and full["perplexity"] == pytest.approx(16.0)
    assert full["dead_code_share"] == 0.0
    empty = TokenStats(VOCABS).summary()["overall"]
    assert empty["tokens_per_second"] is None
    assert empty["codebooks"]["semantic"]["dead_code_share"] == 1.0
    assert empty["codebooks"]["semantic"]["perplexity"] == 0.0


def test_merge_of_partials_equals_one_pass():
    rows = _random_rows(30)
    one = TokenStats(VOCABS)
    parts = [TokenStats(VOCABS) for _ in range(3)]
    for i, r in enumerate(rows):
        args = (np.array(r["semantic_tokens"]), np.array(r["acoustic_tokens"]), r["duration_s"])
        one.add(*args, group=r["source_uri"].split("/")[3])
        parts[i % 3].add(*args, group=r["source_uri"].split("/")[3])
    merged = TokenStats(VOCABS).merge(parts[0]).merge(parts[1]).merge(parts[2])
    assert merged.summary(include_histograms=True) == one.summary(include_histograms=True)


def test_per_group_split_sums_to_overall():
    rows = _random_rows(20, seed=1)
    stats = read_token_stats(
        _table(rows), VOCABS, group_column="source_uri", group_of=lambda uri: uri.split("/")[3]
    )
    s = stats.summary()
    assert sorted(s["groups"]) == ["a", "b"]
    for key in ("n_items", "n_frames"):
        assert sum(g[key] for g in s["groups"].values()) == s["overall"][key]
    for cb in ("semantic", "acoustic"):
        total = sum(stats.histogram(cb, g) for g in stats.groups)
        np.testing.assert_array_equal(total, stats.histogram(cb))
    b_rows = [r for r in rows if "/b/" in r["source_uri"]]
    assert s["groups"]["b"]["n_items"] == len(b_rows)
    assert s["groups"]["b"]["n_frames"] == sum(r["n_frames"] for r in b_rows)
    json.dumps(s)  # JSON-able


def test_reader_matches_add_loop_and_chunked_tables():
    rows = _random_rows(25, seed=2)
    table = pa.concat_tables([_table(rows[:10]), _table(rows[10:])])  # two chunks per column
    assert table.column("semantic_tokens").num_chunks == 2
    read = read_token_stats(table, VOCABS, group_column="source_uri")
    loop = TokenStats(VOCABS)
    for r in rows:
        loop.add(
            np.array(r["semantic_tokens"]),
            np.array(r["acoustic_tokens"]),
            r["duration_s"],
            group=r["source_uri"],
        )
    assert read.summary(include_histograms=True) == loop.summary(include_histograms=True)
    # No grouping: only the overall figures, and a partial can be continued.
    again = read_token_stats(_table(rows[:10]), VOCABS)
    read_token_stats(_table(rows[10:]), VOCABS, stats=again)
    assert again.summary()["groups"] == {}
    assert again.summary()["overall"] == loop.summary()["overall"]


def test_grouped_reader_path_for_many_groups(monkeypatch):
    import pipeline.audit.token_stats as ts

    rows = _random_rows(12, seed=3)
    combined = read_token_stats(_table(rows), VOCABS, group_column="id")
    monkeypatch.setattr(ts, "_MAX_COMBINED_CELLS", 1)  # force the per-group path
    looped = read_token_stats(_table(rows), VOCABS, group_column="id")
    assert combined.summary(include_histograms=True) == looped.summary(include_histograms=True)


def test_errors_are_loud():
    stats = TokenStats(VOCABS)
    with pytest.raises(ValueError, match="out of range"):
        stats.add(np.array([8]), np.array([0]), 0.04)
    with pytest.raises(ValueError, match="lengths differ"):
        stats.add(np.array([1, 2]), np.array([0]), 0.04)
    with pytest.raises(ValueError, match="cannot merge"):
        stats.merge(TokenStats((8, 8)))
    bad = _table(
        [
            {
                "id": "x",
                "semantic_tokens": [1],
                "acoustic_tokens": [16],
                "n_frames": 1,
                "duration_s": 0.04,
                "source_uri": "u",
            }
        ]
    )
    with pytest.raises(ValueError, match="acoustic token out of range"):
        read_token_stats(bad, VOCABS)


def test_real_vocab_sizes_tokens_per_second():
    stats = TokenStats((16384, 8192))
    rng = np.random.default_rng(0)
    for _ in range(4):
        n = 250  # 10 s at 25 frames/s
        stats.add(rng.integers(0, 16384, n), rng.integers(0, 8192, n), 10.0, group="unit-0")
    s = stats.summary()
    assert s["overall"]["tokens_per_second"] == pytest.approx(25.0)
    sem = s["overall"]["codebooks"]["semantic"]
    assert sem["used_codes"] <= 1000 and sem["dead_code_share"] > 0.9
    assert math.isclose(sem["perplexity"], 2 ** sem["entropy_bits"])
