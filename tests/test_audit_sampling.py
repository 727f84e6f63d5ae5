"""Audit sampling: seeded, order-independent, stratified by source and spread over units."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pipeline.audit.quality_metrics import DOMAINS
from pipeline.audit.sampling import (
    TOP_LEVEL,
    Candidate,
    allocate,
    decode_seed,
    domain_of,
    random_pick,
    sample_items,
    sample_size,
    source_of,
    stable_hash,
)


def _population(sizes: dict[str, int], per_unit: int = 10) -> list[Candidate]:
    """Candidates of each source, `per_unit` items per unit (the last unit may be short)."""
    out = []
    for source, size in sizes.items():
        for i in range(size):
            out.append(
                Candidate(
                    item_id=f"{source}/u{i // per_unit:03d}/item-{i:05d}.wav",
                    unit_id=f"{source}-unit-{i // per_unit:03d}",
                    source=source,
                    domain="speech",
                    duration_s=1.0 + i % 7,
                )
            )
    return out


def _ids(items: list[Candidate]) -> list[str]:
    return [c.item_id for c in items]


# --- stable_hash / decode_seed / random_pick -----------------------------------------------------


def test_stable_hash_is_fixed_by_seed_and_parts():
    assert stable_hash(3, "a", "b") == stable_hash(3, "a", "b")
    assert 0 <= stable_hash(3, "a", "b") < 2**64
    assert stable_hash(3, "a", "b") != stable_hash(4, "a", "b")
    assert stable_hash(3, "a", "b") != stable_hash(3, "b", "a")
    # parts are separated, not concatenated
    assert stable_hash(3, "ab", "c") != stable_hash(3, "a", "bc")


def test_stable_hash_known_value():
    # sha256("7\x1fx") first 8 bytes, big endian: guards against a silent change of the scheme,
    # which would change every audit's sample.
    import hashlib

    expected = int.from_bytes(hashlib.sha256(b"7\x1fx").digest()[:8], "big")
    assert stable_hash(7, "x") == expected


def test_decode_seed_is_stable_in_range_and_distinct():
    ids = [f"src/item-{i}.wav" for i in range(8)]
    seeds = [decode_seed(11, i) for i in ids]
    assert seeds == [decode_seed(11, i) for i in ids]
    assert all(isinstance(s, int) and 0 <= s < 2**31 - 1 for s in seeds)
    assert len(set(seeds)) == len(ids)
    # the audit seed matters too
    assert [decode_seed(12, i) for i in ids] != seeds


def test_random_pick_is_seeded_and_order_independent():
    ids = [f"item-{i}" for i in range(50)]
    pick = random_pick(ids, 5, seed=1)
    assert len(pick) == 5 and len(set(pick)) == 5 and set(pick) <= set(ids)
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    assert random_pick(shuffled, 5, seed=1) == pick
    assert random_pick(ids, 5, seed=2) != pick
    assert random_pick(ids, 100, seed=1) == random_pick(ids, 50, seed=1)  # k beyond size: all of them
    assert sorted(random_pick(ids, 100, seed=1)) == sorted(ids)
    assert random_pick(ids, 0, seed=1) == []
    # a larger k extends the smaller pick (pick order is a fixed ranking)
    assert random_pick(ids, 8, seed=1)[:5] == pick


# --- sample_items --------------------------------------------------------------------------------


def test_same_seed_same_sample_in_any_order():
    candidates = _population({"a": 400, "b": 120, "c": 7})
    first = sample_items(candidates, 25, seed=5)
    assert len(first) == 25
    assert _ids(sample_items(candidates, 25, seed=5)) == _ids(first)
    for shuffle_seed in range(3):
        shuffled = candidates[:]
        random.Random(shuffle_seed).shuffle(shuffled)
        assert _ids(sample_items(shuffled, 25, seed=5)) == _ids(first)
    # a reversed listing (and a generator) too
    assert _ids(sample_items(iter(candidates[::-1]), 25, seed=5)) == _ids(first)


def test_different_seed_different_sample():
    candidates = _population({"a": 400, "b": 120, "c": 7})
    first = set(_ids(sample_items(candidates, 25, seed=5)))
    second = set(_ids(sample_items(candidates, 25, seed=6)))
    assert first != second


def test_sample_is_sorted_by_source_unit_id():
    chosen = sample_items(_population({"b": 50, "a": 50}), 10, seed=0)
    keys = [(c.source, c.unit_id, c.item_id) for c in chosen]
    assert keys == sorted(keys)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_stratified_every_source_represented_big_one_gets_most(seed):
    sizes = {"big": 1000, "mid": 30, "tiny": 2}
    chosen = sample_items(_population(sizes), 20, seed=seed)
    assert len(chosen) == 20
    assert len({c.item_id for c in chosen}) == 20
    per_source = Counter(c.source for c in chosen)
    assert set(per_source) == set(sizes)
    assert all(per_source[s] >= 1 for s in sizes)
    assert per_source["big"] == max(per_source.values())
    assert per_source["big"] >= 15
    assert all(per_source[s] <= sizes[s] for s in sizes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_allocate_totals_and_caps(seed):
    sizes = {"big": 1000, "mid": 30, "tiny": 2}
    for n in (0, 1, 2, 3, 4, 20, 35, 500, 1031):
        quota = allocate(sizes, n, seed)
        assert set(quota) == set(sizes)
        assert sum(quota.values()) == n
        assert all(0 <= quota[s] <= sizes[s] for s in sizes)
        if n >= len(sizes):
            assert all(quota[s] >= 1 for s in sizes)
    # a stratum never exceeds its size: small ones fill up, the rest goes to whoever has room
    assert allocate({"a": 3, "b": 2, "c": 5}, 9, seed) == {"a": 3, "b": 2, "c": 4}
    # more than the total: capped at every size
    assert allocate(sizes, 5000, seed) == sizes


def test_allocate_skips_empty_strata():
    quota = allocate({"a": 0, "b": 5, "c": 5}, 4, 0)
    assert quota["a"] == 0 and sum(quota.values()) == 4


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_allocate_is_proportional(seed):
    assert allocate({"a": 600, "b": 300, "c": 100}, 10, seed) == {"a": 6, "b": 3, "c": 1}


def test_n_at_least_total_returns_everything():
    candidates = _population({"a": 13, "b": 4, "c": 1})
    for n in (18, 19, 1000):
        chosen = sample_items(candidates, n, seed=3)
        assert sorted(_ids(chosen)) == sorted(_ids(candidates))


def test_n_smaller_than_number_of_sources_gives_distinct_sources():
    sizes = {f"s{i}": 20 + i for i in range(8)}
    candidates = _population(sizes)
    for n in range(1, 8):
        chosen = sample_items(candidates, n, seed=4)
        assert len(chosen) == n
        assert len({c.source for c in chosen}) == n
    assert sample_items(candidates, 0, seed=4) == []


def test_spread_over_units_before_any_second_pick():
    # one source, 5 units of 10 items each
    candidates = _population({"only": 50}, per_unit=10)
    assert len({c.unit_id for c in candidates}) == 5
    for seed in range(5):
        chosen = sample_items(candidates, 5, seed=seed)
        assert len({c.unit_id for c in chosen}) == 5
        chosen = sample_items(candidates, 12, seed=seed)
        per_unit = Counter(c.unit_id for c in chosen)
        # 12 over 5 units: every unit twice before any unit a third time
        assert sorted(per_unit.values()) == [2, 2, 2, 3, 3]


def test_duplicate_candidates_raise():
    candidates = _population({"a": 5})
    with pytest.raises(ValueError, match="twice"):
        sample_items([*candidates, candidates[2]], 3, seed=0)


def test_empty_population():
    assert sample_items([], 5, seed=0) == []


# --- sample_size ---------------------------------------------------------------------------------


def test_sample_size():
    assert sample_size(100, sample=20, fraction=None) == 20
    assert sample_size(10, sample=20, fraction=None) == 10  # capped at the total
    assert sample_size(100, sample=0, fraction=None) == 0
    assert sample_size(10, sample=None, fraction=0.25) == 3  # 2.5 rounded up
    assert sample_size(1000, sample=None, fraction=0.001) == 1
    assert sample_size(7, sample=None, fraction=1.0) == 7
    assert sample_size(3, sample=None, fraction=0.0001) == 1  # never 0 from a positive fraction
    with pytest.raises(ValueError):
        sample_size(10, sample=3, fraction=0.5)
    with pytest.raises(ValueError):
        sample_size(10, sample=None, fraction=0.0)
    with pytest.raises(ValueError):
        sample_size(10, sample=None, fraction=1.5)
    with pytest.raises(ValueError):
        sample_size(10, sample=-1, fraction=None)
    with pytest.raises(ValueError):
        sample_size(10, sample=None, fraction=None)


# --- source_of / domain_of -----------------------------------------------------------------------


def test_source_of_metadata_wins():
    assert source_of("librispeech/a/b.wav", "files", {"source": "LS"}) == "LS"
    assert source_of("librispeech/a/b.wav", "files", {"dataset": "ds"}) == "ds"
    assert source_of("librispeech/a/b.wav", "files", {"corpus": " cp "}) == "cp"
    # source before dataset before corpus
    assert source_of("x/y.wav", "files", {"corpus": "c", "dataset": "d", "source": "s"}) == "s"
    assert source_of("x/y.wav", "files", {"corpus": "c", "dataset": "d"}) == "d"
    # blank or non-string values fall through to the path
    assert source_of("librispeech/a/b.wav", "files", {"source": "  ", "dataset": 3}) == "librispeech"


def test_source_of_paths():
    assert source_of("librispeech/a/b.wav", "files", {}) == "librispeech"
    assert source_of("b.wav", "files", {}) == TOP_LEVEL
    assert source_of("shards/shard-000/key", "tar", {}) == "shards"
    assert source_of("shard-000/key", "tar", {}) == TOP_LEVEL
    assert source_of("parts/part-0.parquet/row-7", "parquet", {}) == "parts"
    assert source_of("part-0.parquet/row-7", "parquet", {}) == TOP_LEVEL


def test_domain_of():
    assert domain_of({"domain": "Voice"}, "sound") == "speech"
    assert domain_of({"domain": " speech "}, "sound") == "speech"
    assert domain_of({"domain": "sfx"}, "music") == "sound"
    assert domain_of({"domain": "SONG"}, "sound") == "music"
    assert domain_of({"domain": "podcast"}, "music") == "music"
    assert domain_of({"domain": 3}, "speech") == "speech"
    assert domain_of({}, "sound") == "sound"
    for value in ("voice", "sfx", "song", "general", "environmental", "audio"):
        assert domain_of({"domain": value}, "speech") in DOMAINS
