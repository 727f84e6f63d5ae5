"""The training loader over real semtok outputs: exactly-once sharding over ranks × DataLoader
workers, seeded orders, exact mid-epoch resume (in process and with workers, items and packed
sequences), filters, the id-hash split, weighted mixing, S3 (the real SeaweedFS server) and Ray.

Most mechanics run on small outputs committed here with `commit_unit` (no Ray, fast); the
`tokenized_output` fixture (made by the real tokenize job) covers the real thing."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.dataset.commit import commit_unit
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.manifest import load_tokens
from pipeline.training.loader import (
    RowFilter,
    TokenLoader,
    build_dataset,
    build_loader,
    collate_items,
    read_tokens_dataset,
    split_of,
)
from pipeline.training.token_layout import TokenLayout
from tests.helpers import FINGERPRINT

LANGS = ("en", "fr", "de")


def make_output(root: Path, *, units: int, per_unit: int, prefix: str, seed: int = 0) -> OutputLayout:
    """A committed output of `units × per_unit` items with known durations and metadata."""
    fs = fsspec.filesystem("file")
    layout = OutputLayout.for_fingerprint(str(root), FINGERPRINT)
    rng = np.random.default_rng(seed)
    for unit in range(units):
        rows = []
        for k in range(per_unit):
            n = int(rng.integers(1, 30))
            rows.append(
                {
                    "id": f"{prefix}{unit:02d}-{k:03d}",
                    "semantic_tokens": rng.integers(0, 16384, n),
                    "acoustic_tokens": rng.integers(0, 8192, n),
                    "n_frames": n,
                    "duration_s": round(float(rng.uniform(0.2, 20.0)), 3),
                    "source_uri": f"/in/{prefix}{unit}-{k}.wav",
                    "metadata": {"lang": LANGS[k % 3], "speaker": k % 5},
                }
            )
        commit_unit(fs, layout, f"unit{unit:02d}", token_rows=rows, fingerprint=FINGERPRINT)
    return layout


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Two synthetic outputs: A (8 units × 30 items) and B (10 units × 30 items)."""
    base = tmp_path_factory.mktemp("loader-outputs")
    a = make_output(base / "a", units=8, per_unit=30, prefix="a", seed=1)
    b = make_output(base / "b", units=10, per_unit=30, prefix="b", seed=2)
    return a.root_url, b.root_url


@pytest.fixture(scope="module")
def truth(outputs):
    """Every row of output A, read with the dataset's own manifest reader: id → row."""
    fs = fsspec.filesystem("file")
    layout = OutputLayout.for_fingerprint(outputs[0], FINGERPRINT)
    table = load_tokens(fs, layout).to_pylist()
    for row in table:
        row["metadata"] = json.loads(row["metadata"])
    return {row["id"]: row for row in table}


def ids(dataset) -> list[str]:
    return [item["id"] for item in dataset]


def worker_streams(batches) -> dict[int, list]:
    """Per DataLoader worker, what it delivered, in order."""
    found: dict[int, list] = collections.defaultdict(list)
    for batch in batches:
        for worker, element in zip(batch["worker"], batch.get("id", batch.get("documents")), strict=True):
            found[int(worker)].append(element)
    return found


# --- sharding and order ------------------------------------------------------------------------
def test_two_ranks_two_workers_read_every_item_once_per_epoch(tokenized_output):
    expected = set(tokenized_output.durations)
    orders = []
    for epoch in (0, 1):
        seen, per_rank = [], []
        for rank in (0, 1):
            dataset = build_dataset(tokenized_output.root, seed=7, rank=rank, world_size=2, shuffle_buffer=3)
            dataset.set_epoch(epoch)
            loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_items)
            got = [(w, i) for batch in loader for w, i in zip(batch["worker"], batch["id"], strict=True)]
            assert {w for w, _ in got} == {0, 1}, "both workers of the rank read"
            per_rank.append(len(got))
            seen += [i for _, i in got]
        counts = collections.Counter(seen)
        assert {Path(i).stem for i in counts} == expected and set(counts.values()) == {1}
        assert abs(per_rank[0] - per_rank[1]) <= 1
        orders.append(seen)
    assert orders[0] != orders[1], "a new epoch reshuffles"


def test_seed_and_epoch_set_the_order(outputs, truth):
    def order(seed: int, epoch: int) -> list[str]:
        dataset = build_dataset(outputs[0], seed=seed)
        dataset.set_epoch(epoch)
        return ids(dataset)

    first = order(1, 0)
    assert sorted(first) == sorted(truth)
    assert order(1, 0) == first
    assert order(2, 0) != first and sorted(order(2, 0)) == sorted(first)
    assert order(1, 1) != first
    unshuffled = ids(build_dataset(outputs[0], shuffle=False))
    assert unshuffled == sorted(truth), "manifest order: units, then ids"


@pytest.mark.parametrize("world", [3, 7])
def test_uneven_splits(outputs, truth, world):
    sizes, seen = [], []
    for rank in range(world):
        got = ids(build_dataset(outputs[0], seed=4, rank=rank, world_size=world))
        sizes.append(len(got))
        seen += got
    assert sorted(seen) == sorted(truth) and max(sizes) - min(sizes) <= 1
    equal, seen = [], []
    for rank in range(world):
        got = ids(build_dataset(outputs[0], seed=4, rank=rank, world_size=world, drop_uneven=True))
        equal.append(len(got))
        seen += got
    assert set(equal) == {len(truth) // world}
    assert len(set(seen)) == len(seen) and set(seen) <= set(truth)


# --- resume --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cut", [0, 1, 57, 239, 240])
def test_resume_in_process_yields_exactly_the_rest(outputs, cut):
    options = {"seed": 5, "shuffle_buffer": 16, "rank": 1, "world_size": 2}
    full = ids(build_dataset(outputs[0], **options))
    assert len(full) == 120
    first = build_dataset(outputs[0], **options)
    stream = iter(first)
    taken = [next(stream)["id"] for _ in range(min(cut, len(full)))]
    state = json.loads(json.dumps(first.state_dict()))  # a state survives JSON
    resumed = build_dataset(outputs[0], **options)
    resumed.load_state_dict(state)
    assert taken + ids(resumed) == full
    assert ids(resumed) == full, "the next iteration starts the epoch afresh"


def test_resume_with_dataloader_workers(outputs):
    options = {"seed": 9, "shuffle_buffer": 8, "num_workers": 2, "batch_size": 3}
    full = worker_streams(build_loader(outputs[0], **options))
    assert sorted(sum(full.values(), [])) == sorted(ids(build_dataset(outputs[0])))
    loader = build_loader(outputs[0], **options)
    received = []
    for step, batch in enumerate(loader):
        received.append(batch)
        if step == 6:
            state = json.loads(json.dumps(loader.state_dict()))
            break
    resumed = build_loader(outputs[0], **options)
    resumed.load_state_dict(state)
    head, tail = worker_streams(received), worker_streams(resumed)
    for worker in (0, 1):
        assert head[worker] + tail[worker] == full[worker]
    # a state taken with 2 workers does not resume with 1
    other = build_loader(outputs[0], **{**options, "num_workers": 1})
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="worker"):
        next(iter(other))


def test_packed_resume_with_workers_to_the_token(outputs):
    layout = TokenLayout(16384)
    options = {"seed": 2, "layout": layout, "seq_len": 48, "num_workers": 2, "batch_size": 2}
    full = list(build_loader(outputs[0], **options))

    def tokens(batches) -> dict[int, list[list[int]]]:
        found = collections.defaultdict(list)
        for batch in batches:
            for row, worker in enumerate(batch["worker"]):
                found[worker].append(batch["input_ids"][row][batch["attention_mask"][row] == 1].tolist())
        return found

    # packing lost nothing: every item's flat ids, once
    items = {item["id"]: item for item in build_dataset(outputs[0], layout=layout)}
    assert sum(int(b["attention_mask"].sum()) for b in full) == sum(
        len(i["input_ids"]) for i in items.values()
    )
    assert all(b["input_ids"].shape[1] == 48 for b in full)
    loader = build_loader(outputs[0], **options)
    received = []
    for step, batch in enumerate(loader):
        received.append(batch)
        if step == 4:
            state = loader.state_dict()
            break
    assert state["kind"] == "packed"
    resumed = build_loader(outputs[0], **options)
    resumed.load_state_dict(state)
    head, tail, whole = tokens(received), tokens(list(resumed)), tokens(full)
    for worker in (0, 1):
        assert head[worker] + tail[worker] == whole[worker]


def test_state_of_another_loader_is_refused(outputs):
    state = build_dataset(outputs[0], seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        build_dataset(outputs[0], seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size|rank"):
        build_dataset(outputs[0], seed=1, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="plan"):
        build_dataset(outputs[0], seed=1, min_duration_s=1.0).load_state_dict(state)
    packed = build_dataset(outputs[0], seed=1, layout=TokenLayout(16384), seq_len=64)
    with pytest.raises(ValueError, match="packed"):
        packed.load_state_dict(state)
    # token cursors count ids of one layout: another order or framing would resume mid-document
    it = iter(packed)
    next(it)
    packed_state = packed.state_dict()
    for layout, framed in ((TokenLayout(16384, order="sequential"), True), (TokenLayout(16384), False)):
        other = build_dataset(outputs[0], seed=1, layout=layout, add_bos_eos=framed, seq_len=64)
        with pytest.raises(ValueError, match="ids"):
            other.load_state_dict(packed_state)
    with pytest.raises(ValueError):
        build_dataset(outputs[0]).load_state_dict({"format": "other"})
    with pytest.raises(ValueError):
        TokenLoader(build_dataset(outputs[0]), num_workers=2, persistent_workers=True)


def test_a_state_taken_between_epochs_resumes_the_new_epoch_whole(outputs):
    """After set_epoch(e + 1), the last epoch's cursors must not carry over: resuming from a
    checkpoint taken there would skip (part of) the new epoch."""
    options = {"seed": 6, "shuffle_buffer": 8}
    fresh = build_dataset(outputs[0], **options)
    fresh.set_epoch(1)
    epoch1 = ids(fresh)
    dataset = build_dataset(outputs[0], **options)
    assert len(ids(dataset)) == 240  # all of epoch 0
    dataset.set_epoch(1)
    state = dataset.state_dict()
    assert state["epoch"] == 1 and not state["cursors"]
    resumed = build_dataset(outputs[0], **options)
    resumed.load_state_dict(state)
    assert ids(resumed) == epoch1
    # a loaded state survives set_epoch of its own epoch, and yields to another epoch
    half = build_dataset(outputs[0], **options)
    half.set_epoch(1)
    stream = iter(half)
    taken = [next(stream)["id"] for _ in range(50)]
    mid = half.state_dict()
    again = build_dataset(outputs[0], **options)
    again.load_state_dict(mid)
    again.set_epoch(1)
    assert taken + ids(again) == epoch1
    again.load_state_dict(mid)
    again.set_epoch(2)
    assert again.state_dict()["cursors"] == {} and len(ids(again)) == 240

    loader = build_loader(outputs[0], num_workers=2, batch_size=7, **options)
    full = worker_streams(loader)
    loader.set_epoch(1)
    state = json.loads(json.dumps(loader.state_dict()))
    assert state["epoch"] == 1 and not state["cursors"]
    resumed = build_loader(outputs[0], num_workers=2, batch_size=7, **options)
    resumed.load_state_dict(state)
    tail = worker_streams(resumed)
    assert sorted(sum(tail.values(), [])) == sorted(epoch1) and tail != full


def test_state_dict_right_after_loading_gives_the_state_back(outputs):
    """Saving before the first step after a resume (a checkpoint at step 0) must not lose the
    loaded position, whatever worker count the state was taken with."""
    loader = build_loader(outputs[0], seed=3, num_workers=2, batch_size=4)
    for step, _ in enumerate(loader):
        if step == 5:
            break
    state = json.loads(json.dumps(loader.state_dict()))
    assert state["num_workers"] == 2 and len(state["cursors"]) == 2
    for target in (build_dataset(outputs[0], seed=3), build_loader(outputs[0], seed=3, num_workers=1)):
        target.load_state_dict(state)
        assert json.loads(json.dumps(target.state_dict())) == state


def test_a_bare_version_folder_name_resolves_under_the_working_directory(outputs, truth, monkeypatch):
    root = Path(outputs[0])
    (version,) = [p.name for p in root.iterdir() if p.is_dir()]
    monkeypatch.chdir(root)
    assert sorted(ids(build_dataset(version))) == sorted(truth)
    assert TokenLayout.for_output(version) == TokenLayout(16384)


# --- filters and split ---------------------------------------------------------------------------
def test_duration_and_metadata_filters(outputs, truth):
    def chosen(**options) -> set[str]:
        return set(ids(build_dataset(outputs[0], seed=3, **options)))

    assert chosen(min_duration_s=5.0, max_duration_s=9.0) == {
        i for i, r in truth.items() if 5.0 <= r["duration_s"] <= 9.0
    }
    assert chosen(metadata_equals={"lang": "fr"}) == {
        i for i, r in truth.items() if r["metadata"]["lang"] == "fr"
    }
    assert chosen(metadata_equals={"lang": ["en", "de"], "speaker": 2}) == {
        i for i, r in truth.items() if r["metadata"]["lang"] in ("en", "de") and r["metadata"]["speaker"] == 2
    }
    assert chosen(metadata_equals={"missing": 1}) == set()
    # a predicate (a lambda: it runs once, at planning) also holds with DataLoader workers
    dataset = build_dataset(
        outputs[0], where=lambda row: row["metadata"]["speaker"] == 4 and row["n_frames"] > 10
    )
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_items)
    got = [i for batch in loader for i in batch["id"]]
    expected = {i for i, r in truth.items() if r["metadata"]["speaker"] == 4 and r["n_frames"] > 10}
    assert sorted(got) == sorted(expected) and expected
    item = next(iter(build_dataset(outputs[0], metadata_equals={"lang": "de"})))
    assert item["metadata"]["lang"] == "de" and item["duration_s"] == truth[item["id"]]["duration_s"]
    np.testing.assert_array_equal(item["semantic"], truth[item["id"]]["semantic_tokens"])
    with pytest.raises(ValueError):
        RowFilter(min_duration_s=3.0, max_duration_s=1.0)


def test_split_is_disjoint_covering_and_stable(outputs, truth, tmp_path):
    def side(url: str, split: str, seed: int = 0) -> set[str]:
        return set(ids(build_dataset(url, seed=seed, split=split, validation_fraction=0.25, split_seed=11)))

    train, validation = side(outputs[0], "train"), side(outputs[0], "validation")
    assert train.isdisjoint(validation) and train | validation == set(truth)
    assert 0.15 < len(validation) / len(truth) < 0.35
    assert side(outputs[0], "validation", seed=99) == validation, "the shuffling seed does not move it"
    assert validation == {i for i in truth if split_of(i, 0.25, seed=11) == "validation"}
    other_seed = set(
        ids(build_dataset(outputs[0], split="validation", validation_fraction=0.25, split_seed=12))
    )
    assert other_seed != validation
    # the output grows: a new unit moves no existing item across the split
    grown = tmp_path / "grown"
    shutil.copytree(Path(outputs[0]), grown)
    make_output(grown, units=9, per_unit=30, prefix="a", seed=1)  # same 8 units + one more
    grown_validation = side(str(grown), "validation")
    assert grown_validation & set(truth) == validation and len(grown_validation) > len(validation)


# --- mixing --------------------------------------------------------------------------------------
def test_weighted_mixing(outputs):
    a, b = outputs

    def sources(**options) -> list[int]:
        return [item["source"] for item in build_dataset([a, b], weights=[3, 1], **{"seed": 8, **options})]

    first = sources()
    assert first == sources(), "seeded: the same mix again"
    assert first != sources(seed=9)
    counts = collections.Counter(first)
    assert counts[0] == 240, "mix_stop='first': the epoch ends when A (weight 3) runs out"
    assert 2.3 < counts[0] / counts[1] < 3.9
    every = sources(mix_stop="all")
    assert collections.Counter(every) == {0: 240, 1: 300}, "mix_stop='all': every item once"
    head = collections.Counter(every[:200])
    assert 2.3 < head[0] / head[1] < 3.9, "weights hold while both sources last"
    # resume inside a mix
    options = {"weights": [3, 1], "seed": 8, "mix_stop": "all"}
    full = ids(build_dataset([a, b], **options))
    dataset = build_dataset([a, b], **options)
    stream = iter(dataset)
    taken = [next(stream)["id"] for _ in range(100)]
    resumed = build_dataset([a, b], **options)
    resumed.load_state_dict(dataset.state_dict())
    assert taken + ids(resumed) == full
    with pytest.raises(ValueError):
        build_dataset([a, b], weights=[1, 0])
    with pytest.raises(ValueError, match="finite"):
        build_dataset([a, b], weights=[float("inf"), 1])


def test_mixing_with_drop_uneven_keeps_ranks_equal(outputs):
    for stop in ("first", "all"):
        options = {"weights": [2, 1], "seed": 4, "world_size": 3, "drop_uneven": True, "mix_stop": stop}
        per_rank = [ids(build_dataset(list(outputs), rank=rank, **options)) for rank in range(3)]
        assert len({len(r) for r in per_rank}) == 1 and per_rank[0]
        flat = sum(per_rank, [])
        assert len(set(flat)) == len(flat)


# --- real outputs: layout, S3, Ray -------------------------------------------------------------
def test_input_ids_follow_the_output_layout(tokenized_output):
    layout = TokenLayout.for_output(tokenized_output.root)
    assert layout == TokenLayout(16384, 8192)
    items = list(build_dataset(tokenized_output.root, layout=layout, as_tensors=True))
    assert len(items) == len(tokenized_output.durations)
    for item in items:
        assert item["input_ids"].dtype == torch.int64 and item["semantic"].dtype == torch.int64
        semantic, acoustic = layout.decode(item["input_ids"].numpy())
        assert (
            semantic.tolist() == item["semantic"].tolist() and acoustic.tolist() == item["acoustic"].tolist()
        )
        assert item["n_frames"] == len(semantic)
        assert abs(item["duration_s"] - tokenized_output.durations[Path(item["id"]).stem]) < 0.05
    with pytest.raises(ValueError, match="vocabularies"):
        build_dataset(tokenized_output.root, layout=TokenLayout(4096))


def test_s3_reads_the_same_items_as_local_disk(tokenized_output, s3_server, s3_bucket):
    fs = s3_server.filesystem()
    version = Path(tokenized_output.version_url).name
    target = f"{s3_bucket.removeprefix('s3://')}/out/{version}"
    for path in Path(tokenized_output.version_url).rglob("*"):
        if path.is_file():
            fs.put_file(str(path), f"{target}/{path.relative_to(tokenized_output.version_url)}")
    options = {"seed": 3, "layout": TokenLayout(16384), "shuffle_buffer": 4}
    local = list(build_dataset(tokenized_output.root, **options))
    remote = list(build_dataset(f"{s3_bucket}/out", storage_options=s3_server.storage_options, **options))
    assert [i["id"] for i in remote] == [i["id"] for i in local]
    for a, b in zip(local, remote, strict=True):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    # and with forked DataLoader workers, each opening its own S3 client
    loader = build_loader(
        f"{s3_bucket}/out", storage_options=s3_server.storage_options, num_workers=2, batch_size=3, seed=3
    )
    assert sorted(i for batch in loader for i in batch["id"]) == sorted(i["id"] for i in local)


def test_ray_dataset_reads_the_manifest_listed_files(tokenized_output, ray_local):  # noqa: ARG001
    dataset = read_tokens_dataset(tokenized_output.root, columns=["id", "duration_s", "semantic_tokens"])
    rows = dataset.take_all()
    assert sorted(Path(r["id"]).stem for r in rows) == sorted(tokenized_output.durations)
    long_ones = read_tokens_dataset(tokenized_output.root, filter=RowFilter(min_duration_s=6.0)).take_all()
    expected = set(ids(build_dataset(tokenized_output.root, min_duration_s=6.0)))
    assert {r["id"] for r in long_ones} == expected and expected
