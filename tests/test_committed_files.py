"""A rerun's planner holds what is committed compactly, and still tells new, changed and gone files.

`CommittedFiles` replaces the dicts of committed file URIs and stamps (~330 bytes per file) with
digests in numpy arrays; the manifest entries `PlanStream` holds drop their URI lists as they are
read. These tests pin that nothing a rerun decides changes: skipped, redone and reported files are
the same as the entries say, with the entries loose or compacted into an index.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.dataset.commit import add_webdataset_twin, commit_unit
from pipeline.dataset.committed_files import CommittedFiles
from pipeline.dataset.compaction import compact_output
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.manifest import SLIM, read_manifest
from pipeline.io.sources import plan_units
from pipeline.io.storage import open_filesystem
from pipeline.tokenize.work_plan import PlanStream
from tests.helpers import FINGERPRINT, token_row


def test_committed_files_answers_membership_seen_changed_and_gone() -> None:
    files = CommittedFiles()
    files.add_unit("u1", ["file:///a.wav", "file:///b.wav"], ["size:1;mtime:5", "size:2;mtime:5"])
    files.add_unit("u2", ["file:///old.wav"], ["size:9;mtime:1"])
    files.add_unit("u2", ["file:///c.wav"], [""])  # a newer entry of u2 replaces the older one
    files.freeze()
    assert len(files) == 3 and "file:///a.wav" in files and "file:///old.wav" not in files
    assert "file:///new.wav" not in files and 42 not in files
    files["file:///a.wav"] = "size:7;mtime:8"  # changed
    files["file:///c.wav"] = "size:3;mtime:3"  # recorded without a stamp: never "changed"
    files["file:///new.wav"] = "size:1;mtime:1"  # not committed: ignored
    assert files.changed_units() == {"u1"} and files.unseen_units() == {"u1"}  # b.wav is gone
    assert files.is_changed("file:///a.wav") and files.current_stamp("file:///a.wav") == "size:7;mtime:8"
    assert not files.is_changed("file:///c.wav") and files.seen("file:///c.wav")
    assert not files.seen("file:///b.wav") and files.current_stamp("file:///b.wav") is None
    with pytest.raises(RuntimeError, match="frozen"):
        files.add_unit("u3", ["file:///d.wav"], [""])
    empty = CommittedFiles().freeze()
    assert "file:///a.wav" not in empty and not empty.changed_units() and not empty.unseen_units()


def test_every_committed_uri_is_found_and_no_other() -> None:
    """5,000 URIs: ~20 of them have a digest whose last byte would be 0, which numpy's fixed-width
    bytes would drop when read back; each must still be found, and none of another 5,000."""
    uris = [f"s3://corpus/d{i // 1000:03d}/clip{i:06d}.flac" for i in range(10_000)]
    files = CommittedFiles()
    for start in range(0, 5000, 100):
        files.add_unit(f"u{start}", uris[start : start + 100], ["size:1;etag:x"] * 100)
    files.freeze()
    assert all(uri in files for uri in uris[:5000]) and not any(uri in files for uri in uris[5000:])
    for uri in uris[:5000:2]:
        files[uri] = "size:1;etag:x"
    assert not files.changed_units() and len(files.unseen_units()) == 50


def _write(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(name.encode() * 3)


def _commit_all(src: str, out: str) -> tuple[OutputLayout, list]:
    fs, _ = open_filesystem(out)
    layout = OutputLayout.for_fingerprint(out, FINGERPRINT)
    units = plan_units(src, kind="files", files_per_unit=2)
    for unit in units:
        rows = [token_row(uri.rsplit("/", 1)[-1], source_uri=uri) for uri in unit.uris]
        info = {**unit.to_dict(), "n_items": len(rows)}
        commit_unit(fs, layout, unit.unit_id, token_rows=rows, fingerprint=FINGERPRINT, unit_info=info)
    return layout, units


@pytest.mark.parametrize("compacted", [False, True])
def test_a_rerun_plans_new_changed_and_gone_files_as_before(tmp_path: Path, compacted: bool) -> None:
    src, out = tmp_path / "in", str(tmp_path / "out")
    _write(src, [f"f{i}.wav" for i in range(6)])
    layout, units = _commit_all(str(src), out)
    fs, _ = open_filesystem(out)
    if compacted:
        compact_output(out)
        assert not list(Path(layout.path("_manifest")).glob("*.json"))  # only the index is left
    by_file = {uri.rsplit("/", 1)[-1]: unit for unit in units for uri in unit.uris}
    (src / "f1.wav").write_bytes(b"changed, and longer than before")  # size differs: a new stamp
    os.remove(src / "f4.wav")  # gone: its unit stays, it is reported
    _write(src, ["g0.wav"])  # new: planned into a new unit

    kwargs = {"storage_options": {}, "kind": "files", "files_per_unit": 2, "glob": None}
    stream = PlanStream(str(src), fs, layout, **kwargs)
    planned = list(stream)
    changed = by_file["f1.wav"]
    assert [[uri.rsplit("/", 1)[-1] for uri in u.uris] for u in planned[:-1]] == [["g0.wav"]]
    redo = planned[-1]  # the changed unit comes last, under its own id, with the current stamps
    assert redo.unit_id == changed.unit_id and redo.uris == changed.uris
    assert redo.stamps != changed.stamps and len(planned) == 2
    assert stream.changed == [changed.unit_id]
    assert [u.rsplit("/", 1)[-1] for u in stream.changed_uris] == ["f1.wav"]
    assert [u.rsplit("/", 1)[-1] for u in stream.deleted_uris] == ["f4.wav"]
    assert stream.skipped == len(units) - 1

    # The entries the planner holds are slim; the whole ones are one read away, and never written
    # back slim (a twin written from a slim entry would lose the unit's file list).
    held = stream.manifest[changed.unit_id]
    assert held[SLIM] and "uris" not in held["unit_info"] and held["unit_info"]["n_uris"] == 2
    whole = stream.full_entries([changed.unit_id])[changed.unit_id]
    assert whole == read_manifest(fs, layout)[changed.unit_id] and len(whole["unit_info"]["uris"]) == 2
    with pytest.raises(ValueError, match="slim"):
        add_webdataset_twin(fs, layout, changed.unit_id, held, FINGERPRINT)


def test_a_unit_whose_newest_entry_is_damaged_is_planned_again(tmp_path: Path) -> None:
    """Its index row was read (and its files noted) before its newer entry file turned out damaged:
    the unit counts as not committed, so its files are planned, not skipped as committed."""
    src, out = tmp_path / "in", str(tmp_path / "out")
    _write(src, [f"f{i}.wav" for i in range(4)])
    layout, units = _commit_all(str(src), out)
    fs, _ = open_filesystem(out)
    compact_output(out)
    first = units[0]
    rows = [token_row(uri.rsplit("/", 1)[-1], source_uri=uri) for uri in first.uris]
    info = {**first.to_dict(), "n_items": len(rows)}
    commit_unit(fs, layout, first.unit_id, token_rows=rows, fingerprint=FINGERPRINT, unit_info=info)
    Path(layout.manifest_path(first.unit_id)).write_text("{damaged")  # newer than its index row
    kwargs = {"storage_options": {}, "kind": "files", "files_per_unit": 2, "glob": None}
    stream = PlanStream(str(src), fs, layout, **kwargs)
    planned = list(stream)
    assert first.unit_id not in stream.manifest and stream.damaged
    assert [u.uris for u in planned] == [first.uris] and not stream.deleted_uris


def test_a_file_committed_without_a_stamp_gets_its_current_one_when_its_unit_is_redone() -> None:
    files = CommittedFiles()
    files.add_unit("u1", ["file:///a.wav", "file:///b.wav"], ["", "size:1;mtime:1"])
    files.freeze()
    files["file:///a.wav"] = "size:5;mtime:5"
    files["file:///b.wav"] = "size:2;mtime:2"
    assert files.changed_units() == {"u1"} and not files.is_changed("file:///a.wav")
    assert files.current_stamp("file:///a.wav") == "size:5;mtime:5"  # recorded with the redo
