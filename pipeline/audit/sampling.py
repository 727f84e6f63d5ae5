"""Which tokenized items an audit listens to: a seeded, stratified sample that a rerun repeats.

Why stratified: a corpus is usually a few large sources and some small ones; a plain random sample
of 20 items can miss a whole source. Every source gets at least one item when the sample is large
enough, the rest is shared in proportion to size, and within a source items are spread across
shards before any shard gives a second one (a bad shard shows up). Every choice is a hash of
(seed, name), never a random generator's state, so the same output, seed and size give the same
items on any machine, in any order of listing.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Metadata keys that may name an item's source (first found wins).
SOURCE_KEYS: tuple[str, ...] = ("source", "dataset", "corpus")
#: Metadata key naming the content domain (speech, music, sound).
DOMAIN_KEY = "domain"
#: Common spellings users put in metadata, mapped onto the metric domains.
DOMAIN_ALIASES: dict[str, str] = {
    "speech": "speech",
    "voice": "speech",
    "music": "music",
    "song": "music",
    "sound": "sound",
    "audio": "sound",
    "general": "sound",
    "sfx": "sound",
    "environmental": "sound",
}
TOP_LEVEL = "(top level)"
# Unit kinds whose item ids carry the container's name (shard, file) before the item's own key.
_CONTAINER_KINDS = ("tar", "parquet")


@dataclass(frozen=True)
class Candidate:
    """One tokenized item the audit may choose."""

    item_id: str
    unit_id: str  # the input unit (shard, Parquet part, chunk of files) it was read from
    source: str
    domain: str
    duration_s: float
    source_uri: str = ""  # where tokenize read it (files units: the file)


def stable_hash(seed: int, *parts: str) -> int:
    """A 64-bit number fixed by (seed, parts): the same on every machine and Python run."""
    digest = hashlib.sha256("\x1f".join((str(seed), *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def source_of(item_id: str, unit_kind: str, metadata: Mapping[str, Any]) -> str:
    """The item's source: a metadata `source` (or dataset/corpus) field, else the top folder of
    its path under the input root (the shard's folder for tar and Parquet inputs)."""
    for key in SOURCE_KEYS:
        value = metadata.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    parts = item_id.split("/")
    folders = parts[:-2] if unit_kind in _CONTAINER_KINDS else parts[:-1]
    return folders[0] if folders else TOP_LEVEL


def domain_of(metadata: Mapping[str, Any], default: str) -> str:
    """The metric domain: metadata `domain` when it names one we know, else `default`."""
    value = metadata.get(DOMAIN_KEY)
    if isinstance(value, str):
        domain = DOMAIN_ALIASES.get(value.strip().lower())
        if domain is not None:
            return domain
    return default


def sample_size(total: int, *, sample: int | None, fraction: float | None) -> int:
    """How many items to audit: `sample` items or `fraction` of them (rounded up), at most all."""
    if sample is not None and fraction is not None:
        raise ValueError("give sample or fraction, not both")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        return min(total, math.ceil(fraction * total))
    if sample is None or sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    return min(total, sample)


def allocate(sizes: Mapping[str, int], n: int, seed: int) -> dict[str, int]:
    """Items per stratum: in proportion to size (largest remainder, ties in seeded order), then
    every stratum that got none takes one from the largest quota. When n is smaller than the
    number of strata, the seeded-first n strata get one each."""
    order = sorted((name for name in sizes if sizes[name] > 0), key=lambda s: stable_hash(seed, "stratum", s))
    quota = {name: 0 for name in sizes}
    total = sum(sizes[name] for name in order)
    n = min(n, total)
    if n < len(order):
        for name in order[:n]:
            quota[name] = 1
        return quota
    shares = {name: n * sizes[name] / total for name in order}
    for name in order:
        quota[name] = math.floor(shares[name])
    remainder = n - sum(quota.values())
    for name in sorted(order, key=lambda s: (-(shares[s] - quota[s]), order.index(s)))[:remainder]:
        quota[name] += 1
    for name in [s for s in order if quota[s] == 0]:
        donor = max(order, key=lambda s: (quota[s], -order.index(s)))
        quota[donor] -= 1
        quota[name] = 1
    return quota


def _spread_over_units(items: Sequence[Candidate], seed: int) -> list[Candidate]:
    """Items of one stratum in pick order: each unit's first pick, then each unit's second, ..."""
    by_unit: dict[str, list[Candidate]] = defaultdict(list)
    for item in items:
        by_unit[item.unit_id].append(item)
    unit_rank = {u: stable_hash(seed, "unit", u) for u in by_unit}
    keyed = []
    for unit, members in by_unit.items():
        members.sort(key=lambda c: stable_hash(seed, "item", c.item_id))
        keyed += [((position, unit_rank[unit]), member) for position, member in enumerate(members)]
    return [member for _, member in sorted(keyed, key=lambda pair: pair[0])]


def sample_items(candidates: Iterable[Candidate], n: int, *, seed: int) -> list[Candidate]:
    """`n` candidates stratified by source and spread over units; sorted by (source, unit, id)."""
    by_source: dict[str, list[Candidate]] = defaultdict(list)
    seen: set[str] = set()
    for candidate in candidates:
        if candidate.item_id in seen:
            raise ValueError(f"item {candidate.item_id!r} is listed twice")
        seen.add(candidate.item_id)
        by_source[candidate.source].append(candidate)
    quota = allocate({s: len(items) for s, items in by_source.items()}, n, seed)
    chosen: list[Candidate] = []
    for source, items in by_source.items():
        chosen += _spread_over_units(items, seed)[: quota[source]]
    return sorted(chosen, key=lambda c: (c.source, c.unit_id, c.item_id))


def decode_seed(seed: int, item_id: str) -> int:
    """The diffusion noise seed of one item: fixed by (audit seed, item), whatever its batch."""
    return stable_hash(seed, "decode", item_id) % (2**31 - 1)


def random_pick(item_ids: Iterable[str], k: int, *, seed: int) -> list[str]:
    """`k` ids chosen by seeded hash (the report's "random" examples), in pick order."""
    return sorted(item_ids, key=lambda i: stable_hash(seed, "random-example", i))[:k]
