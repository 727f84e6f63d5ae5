"""`semtok export`: each format loads with its own library and holds exactly the committed tokens.

Runs on the session's `tokenized_output` (tiny random codec, so every export passes
--allow-random-weights); each export loads with the reader its users have (lhotse
`CutSet.from_shar`, `datasets.load_dataset`, `numpy.memmap` + the index) and is compared with the
Parquet output read through its manifest. Interruptions are simulated by a hook that raises after
N committed parts, and by deleting the done marker and a part.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from pipeline.dataset.commit import commit_unit
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.manifest import load_tokens
from pipeline.export.job import ExportConfig, ExportError, run_export
from pipeline.export.state import DONE, PLAN
from pipeline.export.token_stream import IDX_HEADER, read_index
from pipeline.training.token_layout import TokenLayout
from tests.helpers import CODEC_FINGERPRINT

STATE = {"shar": "cuts.semtok-export", "hf": "_semtok_export", "bin": "_semtok_export"}


class Stop(Exception):
    """Raised by the test hook: the export 'dies' between two parts."""


def committed(version_url: str) -> dict[str, dict[str, Any]]:
    """The output's committed token rows (through its manifest): id → row."""
    root, _, version = version_url.rstrip("/").rpartition("/")
    table = load_tokens(fsspec.filesystem("file"), OutputLayout(root, version))
    return {row["id"]: row for row in table.to_pylist()}


def export(tokenized_output, to: str, dest: Path, **options: Any):  # noqa: ANN001, ANN201
    config = ExportConfig(
        output=tokenized_output.root,
        to=to,
        dest=str(dest),
        allow_random_weights=True,
        **{k: v for k, v in options.items() if k != "after_part"},
    )
    return run_export(config, after_part=options.get("after_part"))


def stop_after(n: int):  # noqa: ANN201
    seen: list[str] = []

    def hook(unit_id: str) -> None:
        seen.append(unit_id)
        if len(seen) >= n:
            raise Stop(f"killed after {n} parts")

    return hook


# --- readers, one per format: {id: (semantic, acoustic, duration)} ---------------------------


def read_shar(dest: Path) -> dict[str, tuple[list[int], list[int], float]]:
    from lhotse import CutSet, MonoCut

    out = {}
    for cut in CutSet.from_shar(in_dir=str(dest)):
        assert isinstance(cut, MonoCut) and not cut.has_recording
        assert cut.id not in out, f"duplicate cut {cut.id}"
        codes = cut.load_codes()
        assert codes.dtype == np.uint16 and codes.ndim == 2 and codes.shape[1] == 2
        assert isinstance(cut.custom["metadata"], dict) and cut.custom["source_uri"]
        out[cut.id] = (codes[:, 0].tolist(), codes[:, 1].tolist(), cut.duration)
    return out


def read_hf(dest: Path) -> dict[str, tuple[list[int], list[int], float]]:
    import datasets

    ds = datasets.load_dataset(str(dest), split="train")
    assert ds.features["semantic_tokens"].feature.dtype == "uint16"
    out = {}
    for row in ds:
        assert row["id"] not in out, f"duplicate row {row['id']}"
        out[row["id"]] = (row["semantic_tokens"], row["acoustic_tokens"], row["duration_s"])
    return out


def read_bin(dest: Path) -> dict[str, tuple[list[int], list[int], float]]:
    layout = TokenLayout.from_json((dest / "vocab.json").read_text())
    itemsize, offsets_checked = read_index((dest / "tokens.idx").read_bytes())
    assert itemsize == layout.dtype.itemsize == 2  # the tiny codec's flat vocabulary fits uint16
    offsets = np.memmap(dest / "tokens.idx", dtype="<i8", mode="r", offset=IDX_HEADER.size)
    tokens = np.memmap(dest / "tokens.bin", dtype=f"<u{itemsize}", mode="r")
    assert np.array_equal(offsets, offsets_checked)
    assert offsets[0] == 0 and offsets[-1] == len(tokens) and (np.diff(offsets) > 0).all()
    documents = pq.read_table(dest / "documents.parquet").to_pylist()
    assert len(documents) == len(offsets) - 1
    out = {}
    for i, doc in enumerate(documents):
        assert doc["start"] == offsets[i] and doc["n_ids"] == offsets[i + 1] - offsets[i]
        ids = tokens[offsets[i] : offsets[i + 1]]
        semantic, acoustic = layout.decode(ids, bos_eos=True)
        assert doc["id"] not in out, f"duplicate document {doc['id']}"
        out[doc["id"]] = (semantic.tolist(), acoustic.tolist(), doc["duration_s"])
    return out


READERS = {"shar": read_shar, "hf": read_hf, "bin": read_bin}


def assert_same_tokens(loaded: dict[str, tuple[list[int], list[int], float]], version_url: str) -> None:
    rows = committed(version_url)
    assert sorted(loaded) == sorted(rows)
    for item_id, (semantic, acoustic, duration) in loaded.items():
        row = rows[item_id]
        assert list(semantic) == list(row["semantic_tokens"]), item_id
        assert list(acoustic) == list(row["acoustic_tokens"]), item_id
        assert len(semantic) == row["n_frames"]
        assert duration == pytest.approx(row["duration_s"])


def small_output(root: Path, fingerprint: dict[str, Any], item_ids: list[str]) -> str:
    """A one-unit output committed directly (no codec, no Ray); its version folder."""
    layout = OutputLayout.for_fingerprint(str(root), fingerprint)
    rows = [
        {
            "id": item_id,
            "semantic_tokens": [k, 16383 - k],
            "acoustic_tokens": [8191 - k, k],
            "n_frames": 2,
            "duration_s": 0.08,
            "source_uri": f"/in/{k}.wav",
            "metadata": {"k": k},
        }
        for k, item_id in enumerate(item_ids)
    ]
    commit_unit(fsspec.filesystem("file"), layout, "u0", token_rows=rows, fingerprint=fingerprint)
    return layout.version_url


def snapshot(dest: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(dest)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in dest.rglob("*")
        if p.is_file()
    }


# --- each format loads with its library and holds exactly the output's tokens ---------------


def test_shar_export_loads_with_lhotse(tokenized_output, tmp_path, capsys):
    dest = tmp_path / "shar"
    assert main(["export", tokenized_output.root, "--to", "shar", str(dest), "--allow-random-weights"]) == 0
    assert "exported" in capsys.readouterr().out
    loaded = read_shar(dest)
    assert_same_tokens(loaded, tokenized_output.version_url)
    assert sorted(Path(i).stem for i in loaded) == sorted(tokenized_output.durations)
    index = json.loads((dest / STATE["shar"] / DONE).read_text())
    assert index["n_items"] == len(loaded) and index["fingerprint"]["random_weights"] is True
    assert len(index["shar_fields"]["cuts"]) == len(index["shar_fields"]["codes"]) == index["n_units"]
    # an item's frame count is not always round(duration * frame rate): the codes are not sliced
    rate = index["frame_rate"]
    assert any(len(s) != round(d * rate) for s, _, d in loaded.values())


def test_hf_export_loads_with_datasets(tokenized_output, tmp_path):
    import yaml

    dest = tmp_path / "hf"
    result = export(tokenized_output, "hf", dest)
    assert result.status == "exported" and result.n_items == len(tokenized_output.durations)
    assert_same_tokens(read_hf(dest), tokenized_output.version_url)
    card = (dest / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["configs"][0]["data_files"][0]["path"] == "data/train-*.parquet"
    assert front["dataset_info"]["splits"][0]["num_examples"] == result.n_items
    assert {f["name"] for f in front["dataset_info"]["features"]} >= {
        "id",
        "semantic_tokens",
        "acoustic_tokens",
    }
    fp = result.index["fingerprint"]
    for fact in ("semanticodec", f"| {fp['token_rate']} |", f"| {fp['semantic_vocab_size']} |", "| 8192 |"):
        assert fact in card
    assert f"| items | {result.n_items} |" in card
    assert sorted(p.name for p in (dest / "data").iterdir()) == [
        f"train-{i:05d}-of-{result.n_units:05d}.parquet" for i in range(result.n_units)
    ]


@pytest.mark.parametrize("order", ["interleaved", "sequential"])
def test_bin_export_loads_with_memmap(tokenized_output, tmp_path, order):
    dest = tmp_path / "bin"
    argv = [
        "export",
        tokenized_output.root,
        "--to",
        "bin",
        str(dest),
        "--allow-random-weights",
        "--order",
        order,
    ]
    assert main(argv) == 0
    assert_same_tokens(read_bin(dest), tokenized_output.version_url)
    vocab = json.loads((dest / "vocab.json").read_text())
    assert (
        vocab["order"] == order
        and vocab["semantic_vocab_size"] == tokenized_output.config.semantic_vocab_size
    )
    assert not (dest / STATE["bin"] / "data").exists()  # parts are scratch once the stream is written
    assert not (dest / STATE["bin"] / "_tmp").exists()


# --- refusals: one line, exit 2 ------------------------------------------------------------------


@pytest.mark.parametrize("to", ["shar", "hf", "bin"])
def test_random_weights_refused_without_the_flag(tokenized_output, tmp_path, capsys, to):
    dest = tmp_path / "out"
    assert main(["export", tokenized_output.root, "--to", to, str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "random codec weights" in err and "--allow-random-weights" in err
    assert not dest.exists()


def test_a_folder_of_something_else_or_another_export_is_refused(tokenized_output, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["export", tokenized_output.root, "--to", "hf", str(foreign), "--allow-random-weights"]) == 2
    assert "not empty" in capsys.readouterr().err
    dest = tmp_path / "bin"
    export(tokenized_output, "bin", dest)
    for argv, words in (
        (["--to", "bin", str(dest), "--order", "sequential"], "order='interleaved'"),
        (["--to", "hf", str(dest)], "holds a bin export"),
    ):
        assert main(["export", tokenized_output.root, *argv, "--allow-random-weights"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err
    assert (
        main(["export", tokenized_output.root, "--to", "hf", str(tmp_path / "x"), "--storage-options", "[1]"])
        == 2
    )
    assert "JSON object" in capsys.readouterr().err
    assert (
        main(["export", tokenized_output.root, "--to", "hf", str(tmp_path / "x"), "--order", "sequential"])
        == 2
    )
    assert "--order applies to --to bin only" in capsys.readouterr().err


# ids are relative paths of any characters (pipeline/io/sources.py); Shar stores them as tar names
ODD_IDS = [
    "dir/sub dir/ü x.wav",
    "shard/key~abcd1234",
    "m.jsonl/#dup3",
    "x.npy",
    "日本語/音声.wav",
    "q'uo\"te%20.flac",
    "a" * 150,
]
# a weights URL with userinfo and a signed query, as a fingerprint can record it
SECRET_WEIGHTS = "s3://AKIAEXAMPLE:hunter2secret@bucket/weights?X-Amz-Signature=f00dfeedcafe"


@pytest.mark.parametrize("to", ["shar", "hf", "bin"])
def test_odd_ids_survive_and_no_credential_reaches_the_export(tmp_path, to):
    """The card, file metadata, plan and index carry the fingerprint: redacted, like the output's
    own card (an HF folder is made to be published)."""
    fingerprint = {**CODEC_FINGERPRINT, "weights": SECRET_WEIGHTS, "random_weights": False}
    version_url = small_output(tmp_path / "out", fingerprint, ODD_IDS)
    dest = tmp_path / to
    assert main(["export", str(tmp_path / "out"), "--to", to, str(dest)]) == 0
    assert_same_tokens(READERS[to](dest), version_url)
    for path in dest.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            data = gzip.decompress(data) if path.suffix == ".gz" else data
            assert b"hunter2secret" not in data and b"f00dfeedcafe" not in data, path
    index = json.loads((dest / STATE[to] / DONE).read_text())
    assert index["fingerprint"]["weights"] == "s3://***@bucket/weights?X-Amz-Signature=***"
    if to == "hf":
        assert "s3://***@bucket/weights" in (dest / "README.md").read_text()


def test_a_file_as_dir_and_a_missing_library_are_one_line_errors(tmp_path, capsys, monkeypatch):
    output = tmp_path / "out"
    small_output(output, {**CODEC_FINGERPRINT, "weights": "/models/sc", "random_weights": False}, ["a"])
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(["export", str(output), "--to", "bin", str(afile)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file" in err and afile.read_text() == "mine"
    monkeypatch.setitem(sys.modules, "lhotse", None)  # `import lhotse` fails as if not installed
    dest = tmp_path / "shar"
    assert main(["export", str(output), "--to", "shar", str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lhotse" in err and ".[export]" in err
    assert not dest.exists(), "refused before anything is written"


def test_weights_named_random_are_refused_without_the_flag(tmp_path, capsys):
    """A fingerprint without `random_weights` (another codec, an older output) still says
    `random:SEED` in its weights, which the output's card reads too."""
    output = tmp_path / "out"
    small_output(output, {k: v for k, v in CODEC_FINGERPRINT.items() if k != "random_weights"}, ["a"])
    assert main(["export", str(output), "--to", "bin", str(tmp_path / "bin")]) == 2
    assert "random codec weights" in capsys.readouterr().err


# --- interrupted, resumed, rerun -----------------------------------------------------------------


@pytest.mark.parametrize("to", ["shar", "hf", "bin"])
def test_killed_export_resumes_to_the_same_result(tokenized_output, tmp_path, to):
    whole = tmp_path / "whole"
    reference = export(tokenized_output, to, whole)
    dest = tmp_path / "killed"
    with pytest.raises(Stop):
        export(tokenized_output, to, dest, threads=1, after_part=stop_after(2))
    assert (dest / STATE[to] / PLAN).exists() and not (dest / STATE[to] / DONE).exists()
    assert len(list((dest / STATE[to] / "parts").glob("*.json"))) == 2
    result = export(tokenized_output, to, dest)
    assert result.status == "resumed" and result.parts_skipped == 2
    assert result.parts_written == reference.n_units - 2
    assert READERS[to](dest) == READERS[to](whole)
    if to != "shar":  # Parquet and the stream are byte-for-byte deterministic (gzip stamps times)
        data = [f for f in reference.index["files"] if f["path"] != "README.md"]
        assert {f["path"]: f["sha256"] for f in result.index["files"] if f["path"] != "README.md"} == {
            f["path"]: f["sha256"] for f in data
        }


@pytest.mark.parametrize("to", ["shar", "hf", "bin"])
def test_rerun_of_a_finished_export_is_a_no_op_and_lost_parts_are_redone(
    tokenized_output, tmp_path, capsys, to
):
    dest = tmp_path / to
    first = export(tokenized_output, to, dest)
    before = snapshot(dest)
    assert main(["export", tokenized_output.root, "--to", to, str(dest), "--allow-random-weights"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert snapshot(dest) == before

    # lose the done marker and one part's data: exactly what is missing is written again
    (dest / STATE[to] / DONE).unlink()
    victim = next(f["path"] for f in first.index["files"] if not f["path"].endswith((".md", ".json")))
    (dest / victim).unlink()
    again = export(tokenized_output, to, dest)
    assert again.status == "resumed"
    # bin's parts are removed once the stream is written, so it redoes them all
    assert again.parts_written == (first.n_units if to == "bin" else 1)
    assert_same_tokens(READERS[to](dest), tokenized_output.version_url)


def test_resume_refuses_a_source_changed_under_it(tokenized_output, tmp_path):
    version = Path(tokenized_output.version_url)
    copy = tmp_path / "out" / version.name
    shutil.copytree(version, copy)
    dest = tmp_path / "hf"
    config = ExportConfig(
        output=str(copy.parent), to="hf", dest=str(dest), allow_random_weights=True, threads=1
    )
    with pytest.raises(Stop):
        run_export(config, after_part=stop_after(1))
    plan = json.loads((dest / STATE["hf"] / PLAN).read_text())
    last = plan["units"][-1]["unit_id"]
    entry_path = copy / "_manifest" / f"{last}.json"
    entry = json.loads(entry_path.read_text())
    for record in entry["files"]:
        if record["kind"] == "tokens":
            record["sha256"] = "0" * 64  # as if retry-failed recommitted the unit
    entry_path.write_text(json.dumps(entry))
    with pytest.raises(ExportError, match="changed since this export began"):
        run_export(config)


def test_only_committed_units_are_exported(tokenized_output, tmp_path):
    version = Path(tokenized_output.version_url)
    copy = tmp_path / "out" / version.name
    shutil.copytree(version, copy)
    dropped = sorted((copy / "_manifest").glob("*.json"))[0]
    dropped.unlink()  # its tokens file stays: an uncommitted leftover readers must not see
    dest = tmp_path / "shar"
    config = ExportConfig(output=str(copy.parent), to="shar", dest=str(dest), allow_random_weights=True)
    run_export(config)
    loaded = read_shar(dest)
    assert_same_tokens(loaded, str(copy))
    assert len(loaded) < len(tokenized_output.durations)


# --- object storage ----------------------------------------------------------------------------


@pytest.mark.parametrize("to", ["bin", "hf"])
def test_export_to_s3(tokenized_output, s3_server, s3_bucket, tmp_path, to):
    dest_url = f"{s3_bucket}/exports/{to}"
    options = s3_server.storage_options
    argv = [
        "export",
        tokenized_output.root,
        "--to",
        to,
        dest_url,
        "--allow-random-weights",
        "--dest-storage-options",
        json.dumps(options),
    ]
    assert main(argv) == 0
    assert main(argv) == 0  # the rerun finds the done marker on S3
    fs = s3_server.filesystem()
    local = tmp_path / "copy"
    fs.get(dest_url.removeprefix("s3://"), str(local), recursive=True)
    assert (local / STATE[to] / DONE).exists()
    assert_same_tokens(READERS[to](local), tokenized_output.version_url)
