"""The driver-side assembler: segments back into items, items into finished units, exactly once."""

from __future__ import annotations

import numpy as np

from pipeline.records import InputUnit
from pipeline.tokenize.assemble import UnitAssembler
from pipeline.tokenize.prepare_stage import ERROR, SEGMENT, UNIT, empty_row

UNIT_JSON = InputUnit("u1", "files", ("file:///a.wav", "file:///b.wav")).to_json()


def _rows(*rows: dict) -> dict[str, np.ndarray]:
    columns: dict[str, list] = {name: [] for name in empty_row()}
    for overrides in rows:
        row = {**empty_row(), "unit_id": "u1", **overrides}
        for name, value in row.items():
            columns[name].append(value)
    out = {}
    for name, values in columns.items():
        array = np.empty(len(values), dtype=object)
        array[:] = values
        out[name] = array
    return out


def _segment(item: int, seg: int, total: int, tokens: list[int]) -> dict:
    return {
        "row_kind": SEGMENT,
        "item_index": item,
        "item_id": f"i{item}",
        "seg_index": seg,
        "n_segments": total,
        "num_tokens": 3,
        "duration_s": 1.0,
        "tokens": np.array(tokens, dtype=np.uint16).tobytes(),
    }


def test_unit_finishes_once_every_item_is_accounted_for_in_any_order() -> None:
    assembler = UnitAssembler()
    assert list(assembler.add(_rows(_segment(0, 1, 2, [5, 6, 7, 8])))) == []
    assert list(assembler.add(_rows({"row_kind": UNIT, "n_items": 2, "unit": UNIT_JSON}))) == []
    error = {"row_kind": ERROR, "item_index": 1, "item_id": "i1", "stage": "decode", "reason": "undecodable"}
    assert list(assembler.add(_rows(error))) == []  # item 0 still lacks segment 0
    (finished,) = assembler.add(_rows(_segment(0, 0, 2, [1, 2, 3, 4])))
    (row,) = finished.token_rows
    assert row["semantic_tokens"].tolist() == [1, 3, 5] and row["acoustic_tokens"].tolist() == [2, 4, 6]
    assert [e["reason"] for e in finished.error_rows] == ["undecodable"]
    assert assembler.pending == 0


def test_redelivered_rows_never_finish_an_item_early_or_add_rows() -> None:
    assembler = UnitAssembler()
    closing = {"row_kind": UNIT, "n_items": 1, "unit": UNIT_JSON}
    first = _segment(0, 0, 2, [1, 2, 3, 4])
    assert list(assembler.add(_rows(closing, first, first))) == []  # segment 0 twice is not 2 of 2
    (finished,) = assembler.add(_rows(_segment(0, 1, 2, [5, 6, 7, 8])))
    assert len(finished.token_rows) == 1
    assert list(assembler.add(_rows(first, closing))) == []  # late copies of a finished unit
    assert assembler.redelivered == 2 and assembler.pending == 0


def test_a_failed_segment_turns_its_item_into_one_error_row() -> None:
    assembler = UnitAssembler()
    failed = {**_segment(0, 1, 2, []), "row_kind": ERROR, "stage": "encode", "reason": "encode_failed"}
    rows = _rows({"row_kind": UNIT, "n_items": 1, "unit": UNIT_JSON}, _segment(0, 0, 2, [1, 2, 3, 4]), failed)
    (finished,) = assembler.add(rows)
    assert finished.token_rows == [] and [e["reason"] for e in finished.error_rows] == ["encode_failed"]
