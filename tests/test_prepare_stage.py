"""The prepare stage with poison items: each item ends once, as segments or as an error row.

Most tests call `PrepareUnit` directly (no Ray); one runs a real tokenize job on local Ray.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import fsspec
import pytest

from pipeline.config import TokenizeConfig
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.manifest import load_errors, load_tokens
from pipeline.records import InputUnit
from pipeline.tokenize import job as tokenize
from pipeline.tokenize.prepare_stage import ERROR, SEGMENT, UNIT, WORKER_CRASHED, ItemLedger, PrepareUnit
from tests import poison
from tests.corpus import speech_like, wav_bytes

TINY = {"codec_size": "tiny", "weights": "random:0", "token_rate": 50, "semantic_vocab_size": 16384}
SPEC = TokenizeConfig(input="x", output="y", **TINY).codec_spec()
POISONS = {"b_abort.wav": poison.ABORT, "d_hang.wav": poison.HANG, "f_kill.wav": poison.KILL}


def write_corpus(folder: Path) -> list[str]:
    """Good WAVs a, c, e, g with poison files between them, all in one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(["a_good.wav", "c_good.wav", "e_good.wav", "g_good.wav"]):
        (folder / name).write_bytes(wav_bytes(speech_like(0.4 + 0.1 * i, 16000, seed=i), 16000))
    for name, magic in POISONS.items():
        (folder / name).write_bytes(magic + wav_bytes(speech_like(0.3, 16000, seed=9), 16000))
    (folder / "h_garbage.wav").write_bytes(b"not audio")
    return sorted(p.name for p in folder.iterdir())


def unit_row(folder: Path, names: list[str]) -> dict:
    unit = InputUnit("u0", "files", tuple(str(folder / n) for n in names), root=str(folder))
    return {"unit": unit.to_json()}


def rows_by_kind(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {SEGMENT: [], ERROR: [], UNIT: []}
    for row in rows:
        out[row["row_kind"]].append(row)
    return out


def test_poison_items_become_error_rows_and_the_unit_goes_on(tmp_path: Path) -> None:
    names = write_corpus(tmp_path / "in")
    prepare = PrepareUnit(SPEC, decode_fn=poison.DECODE_FN, item_timeout_s=3.0)
    pickle.loads(pickle.dumps(prepare))  # travels to Ray workers
    rows = rows_by_kind(list(prepare(unit_row(tmp_path / "in", names))))
    reasons = {r["item_id"]: r["reason"] for r in rows[ERROR]}
    assert reasons == {
        "b_abort.wav": "decode_crashed",
        "d_hang.wav": "decode_timeout",
        "f_kill.wav": "decode_crashed",
        "h_garbage.wav": "undecodable",
    }
    assert all(r["stage"] == "decode" for r in rows[ERROR])
    assert "SIGABRT" in next(r["detail"] for r in rows[ERROR] if r["item_id"] == "b_abort.wav")
    assert {r["item_id"] for r in rows[SEGMENT]} == {"a_good.wav", "c_good.wav", "e_good.wav", "g_good.wav"}
    assert [r["n_items"] for r in rows[UNIT]] == [len(names)]
    assert prepare.stats.errors_by_reason == {"decode_crashed": 2, "decode_timeout": 1, "undecodable": 1}
    pickle.loads(pickle.dumps(prepare))  # still picklable after use (the decoder stays behind)


def test_isolated_and_in_process_decoding_give_the_same_segments(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.wav").write_bytes(wav_bytes(speech_like(0.7, 22050, seed=i), 22050))
    row = unit_row(folder, [f"{i}.wav" for i in range(3)])
    isolated = list(PrepareUnit(SPEC)(row))
    plain = list(PrepareUnit(SPEC, isolate=False)(row))
    assert isolated == plain


def test_decode_options_reach_the_decode_function(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.wav").write_bytes(wav_bytes(speech_like(1.0, 16000, seed=1), 16000))
    prepare = PrepareUnit(SPEC, decode_options={"max_seconds": 0.5})
    rows = rows_by_kind(list(prepare(unit_row(folder, ["a.wav"]))))
    assert [r["reason"] for r in rows[ERROR]] == ["too_long"]


def test_ledger_turns_an_item_that_kept_killing_the_worker_into_an_error_row(tmp_path: Path) -> None:
    names = ["a_good.wav", "c_good.wav", "e_good.wav"]
    folder = tmp_path / "in"
    folder.mkdir()
    for i, name in enumerate(names):
        (folder / name).write_bytes(wav_bytes(speech_like(0.4, 16000, seed=i), 16000))
    ledger_dir = str(tmp_path / "ledger")
    # two earlier attempts at this unit died inside item 1 (e.g. a native crash in the worker)
    for _ in range(2):
        ledger = ItemLedger(ledger_dir, "u0")
        ledger.mark(0, "start")
        ledger.mark(0, "done")
        ledger.mark(1, "start")
    prepare = PrepareUnit(SPEC, ledger_dir=ledger_dir, max_item_attempts=2, isolate=False)
    rows = rows_by_kind(list(prepare(unit_row(folder, names))))
    assert [(r["item_id"], r["reason"]) for r in rows[ERROR]] == [("c_good.wav", WORKER_CRASHED)]
    assert {r["item_id"] for r in rows[SEGMENT]} == {"a_good.wav", "e_good.wav"}
    ledger = ItemLedger(ledger_dir, "u0")
    assert [ledger.unfinished(i) for i in range(3)] == [0, 2 - 1, 0]  # the error row closed one
    # one attempt below the bound: the item is tried again
    again = PrepareUnit(SPEC, ledger_dir=str(tmp_path / "other"), max_item_attempts=2)
    ItemLedger(str(tmp_path / "other"), "u0").mark(1, "start")
    rows = rows_by_kind(list(again(unit_row(folder, names))))
    assert rows[ERROR] == [] and len({r["item_id"] for r in rows[SEGMENT]}) == 3


def test_a_job_with_poison_items_finishes_and_accounts_for_every_item(
    tmp_path: Path, ray_local, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = write_corpus(tmp_path / "in")
    prepare_cls = functools.partial(PrepareUnit, decode_fn=poison.DECODE_FN)
    build = tokenize.build_tokenize_dataset

    def build_with_poison(*args, **kwargs):  # the job's own prepare stage, decoding through poison
        if kwargs.get("prepare_cls", PrepareUnit) is PrepareUnit:
            kwargs["prepare_cls"] = prepare_cls
        return build(*args, **kwargs)

    monkeypatch.setattr(tokenize, "build_tokenize_dataset", build_with_poison)
    out = str(tmp_path / "out")
    config = TokenizeConfig(
        input=str(tmp_path / "in"),
        output=out,
        files_per_unit=len(names),
        progress_interval_s=60,
        item_timeout_s=5.0,
        **TINY,
    )
    summary = tokenize.run_tokenize(config)
    fs = fsspec.filesystem("file")
    layout = OutputLayout(out, summary.output.rstrip("/").rsplit("/", 1)[-1])
    tokens = load_tokens(fs, layout, columns=["id"]).column("id").to_pylist()
    errors = {row["id"]: row["reason"] for row in load_errors(fs, layout).to_pylist()}
    assert sorted(tokens) == ["a_good.wav", "c_good.wav", "e_good.wav", "g_good.wav"]
    assert errors == {
        "b_abort.wav": "decode_crashed",
        "d_hang.wav": "decode_timeout",
        "f_kill.wav": "decode_crashed",
        "h_garbage.wav": "undecodable",
    }
    assert summary.units_planned == 1 and summary.units_committed == 1
    assert summary.items == len(names) == len(tokens) + len(errors)
