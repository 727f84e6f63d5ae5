"""`semtok verify` tells the truth: nothing committed fails, damaged entries and changed inputs are
problems, never crashes."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec

from pipeline.dataset.commit import commit_unit
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.run_records import write_run_record
from pipeline.io.sources import plan_units
from pipeline.io.storage import source_stamp
from pipeline.ops.verify import verify
from tests.corpus import speech_like, wav_bytes
from tests.helpers import FINGERPRINT, run_cli, token_row

FP = {**FINGERPRINT, "test": "verify"}


def committed(tmp_path: Path, units: dict[str, list[str]]) -> tuple[str, OutputLayout]:
    out = str(tmp_path / "out")
    fs = fsspec.filesystem("file")
    layout = OutputLayout.for_fingerprint(out, FP)
    for unit, ids in units.items():
        commit_unit(fs, layout, unit, token_rows=[token_row(i) for i in ids], fingerprint=FP)
    return out, layout


def test_missing_output_path_fails(tmp_path):
    report = verify(str(tmp_path / "typo"))
    assert not report.ok and report.problems == 1
    assert report.issues == [f"output path does not exist: {tmp_path / 'typo'}"]
    assert "output path does not exist" in report.text()


def test_output_without_committed_units_fails(tmp_path):
    (tmp_path / "empty").mkdir()
    report = verify(str(tmp_path / "empty"))
    assert not report.ok and report.issues == [f"no committed units under {tmp_path / 'empty'}"]
    # a version that only has a run record (nothing committed) fails too
    out = str(tmp_path / "out")
    layout = OutputLayout.for_fingerprint(out, FP)
    write_run_record(fsspec.filesystem("file"), layout, "r1", {"kind": "tokenize"})
    report = verify(out)
    assert not report.ok
    assert report.versions[0].issues == [f"no committed units under {layout.version_url}"]


def test_version_folder_given_as_root_gets_a_hint(tmp_path):
    out, layout = committed(tmp_path, {"u1": ["a"]})
    assert verify(out).ok
    report = verify(layout.version_url)
    assert not report.ok
    assert f"pass its parent {out} with --version {layout.version}" in report.issues[0]


def test_damaged_manifest_entries_are_problems_not_crashes(tmp_path):
    out, layout = committed(tmp_path, {"u1": ["a"], "u2": ["b"], "u3": ["c"]})
    Path(layout.manifest_path("u2")).write_text('{"unit_id": "u2", "fil')
    Path(layout.manifest_path("u3")).write_text(json.dumps({"unit_id": "u3"}))
    report = verify(out)
    v = report.versions[0]
    assert not report.ok and v.units_committed == 1
    assert [d["path"] for d in v.damaged_entries] == ["_manifest/u2.json", "_manifest/u3.json"]
    # their data files are no longer listed by any entry: orphans until a rerun recommits them
    assert v.orphaned_files == ["tokens/part-u2.parquet", "tokens/part-u3.parquet"]
    text = report.text()
    assert "damaged manifest entries" in text and "_manifest/u2.json" in text
    assert json.loads(json.dumps(report.to_dict()))["versions"][0]["damaged_entries"]


def test_cli_fails_on_a_mistyped_output(tmp_path):
    done = run_cli("verify", str(tmp_path / "nope"), timeout=120)
    assert done.returncode == 1, done.stderr
    assert "output path does not exist" in done.stdout + done.stderr


def write_wav(path: Path, seconds: float, seed: int) -> None:
    path.write_bytes(wav_bytes(speech_like(seconds, 16000, seed=seed), 16000))


def four_files_in_two_units(tmp_path: Path):
    """An input folder of four short WAVs planned as two units, and the empty output's layout."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        write_wav(src / f"f{i}.wav", 0.2, i)
    out = str(tmp_path / "out")
    layout = OutputLayout.for_fingerprint(out, FP)
    return src, out, fsspec.filesystem("file"), layout, plan_units(str(src), files_per_unit=2)


def test_input_check_reports_changed_deleted_and_new_items(tmp_path):
    src, out, fs, layout, units = four_files_in_two_units(tmp_path)
    assert len(units) == 2
    for n, unit in enumerate(units):
        info = unit.to_dict()
        info.pop("stamps", None)
        if n == 0:  # the first unit has stamps, the second was committed before stamps existed
            info["stamps"] = [source_stamp(fs.info(fs._strip_protocol(u))) for u in unit.uris]
        rows = [token_row(u.rsplit("/", 1)[-1], source_uri=u) for u in unit.uris]
        commit_unit(fs, layout, unit.unit_id, token_rows=rows, fingerprint=FP, unit_info=info)
    report = verify(out, input=str(src), files_per_unit=2)
    assert report.ok, report.text()
    assert any("no source stamps" in note for note in report.versions[0].notes)

    changed, deleted = units[0].uris
    write_wav(src / changed.rsplit("/", 1)[-1], 0.3, 9)  # new content, new size
    (src / deleted.rsplit("/", 1)[-1]).unlink()
    gone = units[1].uris[0]
    (src / gone.rsplit("/", 1)[-1]).unlink()  # unstamped unit: deletions need no stamp
    write_wav(src / "new.wav", 0.2, 7)
    report = verify(out, input=str(src), files_per_unit=2)
    v = report.versions[0]
    assert not report.ok
    assert v.changed_items == [changed] and v.deleted_items == sorted([deleted, gone])
    assert v.missing_items == ["new.wav"] and len(v.missing_units) == 1
    text = report.text()
    assert "changed items: 1" in text and "deleted items: 2" in text


def test_files_units_are_checked_against_the_listing_without_opening_their_files(tmp_path):
    """Verify of 10^5 one-file units must take seconds: a `files` unit whose files are listed with
    the manifest's sizes and whose rows add up takes its ids from its entry. `deep` reads all."""
    src, out, fs, layout, units = four_files_in_two_units(tmp_path)
    for unit in units:
        rows = [token_row(u.rsplit("/", 1)[-1], source_uri=u) for u in unit.uris]
        commit_unit(fs, layout, unit.unit_id, token_rows=rows, fingerprint=FP, unit_info=unit.to_dict())
    report = verify(out, input=str(src), files_per_unit=2)
    v = report.versions[0]
    assert report.ok, report.text()
    assert (v.files_read, v.items_tokens, v.units_committed) == (0, 4, 2)
    assert "0 data file(s) read" in report.text()

    path = Path(layout.tokens_path(units[0].unit_id))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same-size damage: only the checksum sees it
    path.write_bytes(bytes(data))
    assert verify(out).ok
    deep = verify(out, deep=True)
    assert deep.versions[0].files_read == 2
    problems = {b["path"]: b["problem"] for b in deep.versions[0].bad_files}
    assert "sha256" in problems.pop(layout.tokens_rel(units[0].unit_id))
    assert "n_items" in problems.pop(layout.manifest_rel(units[0].unit_id)) and not problems

    path.write_bytes(bytes(data[:-10]))  # a truncated file has another size: found without deep
    v = verify(out).versions[0]
    problems = {b["path"]: b["problem"] for b in v.bad_files}
    assert "size" in problems[layout.tokens_rel(units[0].unit_id)]
    # its unit's ids are then unknown (the file is not read): its items count as missing
    assert "n_items" in problems[layout.manifest_rel(units[0].unit_id)]
    assert v.missing_items == sorted(u.rsplit("/", 1)[-1] for u in units[0].uris)
    path.unlink()
    v = verify(out).versions[0]
    assert {b["problem"] for b in v.bad_files} >= {"listed in the manifest but missing"}
