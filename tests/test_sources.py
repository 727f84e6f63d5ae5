"""Planning and reading the four input kinds, on local folders and on a real S3 server."""

from __future__ import annotations

import json
import posixpath
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.io.audio_decoding import AudioDecodeError, decode_audio
from pipeline.io.sources import is_unsafe_name, plan_units, read_unit, safe_relpath
from pipeline.records import InputUnit, SourceItem
from tests.conftest import local_writer, s3_writer
from tests.corpus import (
    OK,
    CorpusSpec,
    build_corpus,
)
from tests.helpers import build_every_input_kind

UNIT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")


@dataclass
class Corpora:
    """Where each corpus lives (URL + storage options) and what it should contain."""

    files: str
    tars: str
    parquet: str
    manifest_jsonl: str
    manifest_csv: str
    options: dict[str, Any] | None
    specs: dict[str, CorpusSpec]


@pytest.fixture(scope="module")
def local_corpora(tmp_path_factory) -> Corpora:
    root = tmp_path_factory.mktemp("corpora")
    specs = build_every_input_kind(lambda sub: local_writer(root / sub), long_seconds=30)
    return Corpora(
        files=str(root / "files"),
        tars=str(root / "tars"),
        parquet=str(root / "pq"),
        manifest_jsonl=str(root / "man" / "manifest.jsonl"),
        manifest_csv=str(root / "man" / "manifest.csv"),
        options=None,
        specs=specs,
    )


@pytest.fixture(scope="module")
def s3_corpora(s3_server) -> Corpora:
    bucket = s3_server.make_bucket("semtok-sources")
    fs = s3_server.filesystem()
    specs = build_every_input_kind(lambda sub: s3_writer(fs, f"{bucket}/{sub}"), long_seconds=30)
    return Corpora(
        files=f"{bucket}/files",
        tars=f"{bucket}/tars/",
        parquet=f"{bucket}/pq",
        manifest_jsonl=f"{bucket}/man/manifest.jsonl",
        manifest_csv=f"{bucket}/man/manifest.csv",
        options=s3_server.storage_options,
        specs=specs,
    )


@pytest.fixture(params=["local", "s3"])
def corpora(request) -> Corpora:
    return request.getfixturevalue(f"{request.param}_corpora")


KINDS = [
    ("files", "files"),
    ("tars", "tar"),
    ("parquet", "parquet"),
    ("manifest_jsonl", "manifest"),
    ("manifest_csv", "manifest"),
]


def _read_all(units: list[InputUnit], options: dict | None) -> list[SourceItem]:
    items: list[SourceItem] = []
    for unit in units:
        # Units travel through Ray rows as JSON: read from the round-tripped unit.
        items.extend(read_unit(InputUnit.from_json(unit.to_json()), storage_options=options))
    return items


def _outcome(item: SourceItem) -> tuple[str, str | None]:
    if item.error is not None:
        return item.error.reason, item.error.stage
    hint = item.metadata.get("audio_path") or item.source_uri
    try:
        decode_audio(item.data or b"", name_hint=hint)
    except AudioDecodeError as exc:
        return exc.reason, "decode"
    return OK, None


@pytest.mark.parametrize("attr,kind", KINDS)
def test_plan_is_deterministic_and_ids_are_safe(corpora, attr, kind):
    url = getattr(corpora, attr)
    a = plan_units(url, storage_options=corpora.options, files_per_unit=4)
    b = plan_units(url, storage_options=corpora.options, files_per_unit=4, kind=kind)
    assert a == b and len(a) > 0
    assert {u.kind for u in a} == {kind}
    ids = [u.unit_id for u in a]
    assert len(set(ids)) == len(ids)
    assert all(UNIT_ID.match(i) for i in ids), ids
    for u in a:
        assert InputUnit.from_dict(json.loads(json.dumps(u.to_dict()))) == u


@pytest.mark.parametrize("attr,kind", KINDS)
def test_every_item_accounted_for_exactly_once(corpora, attr, kind):
    url = getattr(corpora, attr)
    spec = corpora.specs[attr]
    items = _read_all(plan_units(url, storage_options=corpora.options, files_per_unit=3), corpora.options)
    ids = [it.item_id for it in items]
    assert len(ids) == len(set(ids)), "duplicate item ids"
    expected = spec.by_id()
    assert set(ids) == set(expected), set(ids) ^ set(expected)
    for item in items:
        exp = expected[item.item_id]
        reason, stage = _outcome(item)
        assert (reason, stage) == (exp.expected, exp.stage), item.item_id
        assert item.metadata.items() >= exp.metadata.items(), (item.item_id, item.metadata)
        json.dumps(item.metadata)  # JSON-able
        if item.error is None:
            assert isinstance(item.data, bytes)
        else:
            assert item.data is None
        for part in item.item_id.split("/"):
            assert part not in ("", ".", "..")
    for lost in spec.lost:
        assert lost not in ids


def test_files_units_are_sorted_chunks_of_audio_only(local_corpora):
    units = plan_units(local_corpora.files, files_per_unit=4)
    uris = [u for unit in units for u in unit.uris]
    assert uris == sorted(uris)
    assert all(len(u.uris) <= 4 for u in units)
    assert all(len(u.uris) == 4 for u in units[:-1])
    assert not any(u.endswith((".txt", ".md")) for u in uris)
    assert any(u.endswith(".MP3") for u in uris)  # extensions are case-insensitive
    n_items = len(local_corpora.specs["files"].items)
    assert len(uris) == n_items


def test_incremental_planning_with_exclude_uris(tmp_path):
    root = tmp_path / "inc"
    spec = build_corpus(local_writer(root), long_seconds=1)
    first = plan_units(str(root), files_per_unit=5)
    committed = frozenset(u for unit in first[:2] for u in unit.uris)
    rest = plan_units(str(root), files_per_unit=5, exclude_uris=committed)
    rest_uris = {u for unit in rest for u in unit.uris}
    assert not rest_uris & committed
    assert rest_uris | committed == {u for unit in first for u in unit.uris}
    # New files arrive: a run excluding everything committed so far plans only them.
    everything = frozenset(u for unit in first for u in unit.uris)
    (root / "new").mkdir()
    (root / "new" / "fresh.wav").write_bytes((root / spec.items[0].item_id).read_bytes())
    new = plan_units(str(root), files_per_unit=5, exclude_uris=everything)
    assert [u for unit in new for u in unit.uris] == [(root / "new" / "fresh.wav").as_uri()]
    items = list(read_unit(new[0]))
    assert [it.item_id for it in items] == ["new/fresh.wav"]
    # Bare paths are accepted in exclude_uris as well.
    again = plan_units(str(root), exclude_uris=everything | {str(root / "new" / "fresh.wav")})
    assert again == []


def test_single_file_and_glob(local_corpora):
    root = Path(local_corpora.files)
    one = plan_units(str(root / "names" / "héllo wörld.wav"))
    assert len(one) == 1 and one[0].kind == "files"
    assert [it.item_id for it in read_unit(one[0])] == ["héllo wörld.wav"]
    flacs = plan_units(local_corpora.files, glob="**/*.flac")
    got = sorted(it.item_id for u in flacs for it in read_unit(u))
    want = sorted(i.item_id for i in local_corpora.specs["files"].items if i.item_id.endswith(".flac"))
    assert got == want
    star = plan_units(str(root / "rates"), glob="*.wav")
    assert sorted(it.item_id for u in star for it in read_unit(u)) == sorted(
        posixpath.basename(i.item_id)
        for i in local_corpora.specs["files"].items
        if i.item_id.startswith("rates/")
    )


def test_unreadable_file_becomes_error_row(tmp_path):
    root = tmp_path / "gone"
    build_corpus(local_writer(root), long_seconds=1)
    units = plan_units(str(root), files_per_unit=1000)
    victim = root / "rates" / "sr8000_pcm16.wav"
    victim.unlink()
    items = {it.item_id: it for it in read_unit(units[0])}
    assert items["rates/sr8000_pcm16.wav"].error.reason == "unreadable_object"
    assert items["rates/sr8000_pcm16.wav"].error.stage == "read"
    assert sum(it.error is None for it in items.values()) == len(items) - 1


def test_auto_detects_kinds(local_corpora):
    assert {u.kind for u in plan_units(local_corpora.tars)} == {"tar"}
    assert {u.kind for u in plan_units(local_corpora.parquet)} == {"parquet"}
    assert {u.kind for u in plan_units(local_corpora.manifest_csv)} == {"manifest"}
    assert {u.kind for u in plan_units(local_corpora.files)} == {"files"}
    with pytest.raises(ValueError):
        plan_units(local_corpora.files, kind="bogus")


def test_tar_unsafe_names_never_escape(corpora):
    units = plan_units(corpora.tars, storage_options=corpora.options)
    items = _read_all(units, corpora.options)
    unsafe = [it for it in items if it.error and it.error.reason == "unsafe_member_name"]
    assert len(unsafe) == 6
    base = "/srv/out"
    for it in items:
        assert not it.item_id.startswith("/")
        assert "\x00" not in it.item_id and "\\" not in it.item_id
        assert ".." not in it.item_id.split("/")
        assert not is_unsafe_name(it.item_id)
        assert posixpath.normpath(posixpath.join(base, it.item_id)).startswith(base + "/")
        meta_key = it.metadata.get("__key__")
        if meta_key is not None:
            assert ".." not in meta_key.split("/") and not meta_key.startswith("/")
    assert all(it.data is None for it in unsafe)


def test_truncated_tar_yields_read_members_then_one_error(corpora):
    units = [
        u for u in plan_units(corpora.tars, storage_options=corpora.options) if "shard-000003" in u.unit_id
    ]
    assert len(units) == 1
    items = list(read_unit(units[0], storage_options=corpora.options))
    assert [it.item_id for it in items] == [
        "shard-000003/t0",
        "shard-000003/t1",
        "shard-000003/#truncated",
    ]
    assert [it.error is None for it in items] == [True, True, False]
    assert items[-1].error.reason == "truncated_tar"
    assert items[0].metadata["txt"] == "x"
    assert items[0].source_uri.endswith("shard-000003.tar#t0.wav")


def test_parquet_metadata_policy(local_corpora):
    units = plan_units(local_corpora.parquet)
    assert [u.row_group for u in units] == [0, 1, 2, 0]  # one unit per row group
    items = {it.item_id: it for it in _read_all(units, None)}
    row2 = items["part-00000/2"]
    assert row2.metadata["score"] is None  # NaN is not JSON
    assert "blob" not in row2.metadata  # binary columns are dropped
    assert row2.metadata["audio_path"] == "clip2.wav"
    assert row2.source_uri.endswith("part-00000.parquet#row=2")
    assert items["part-00000/5"].error.reason == "null_audio"
    assert items["sub/part-00001/utt-a"].metadata["id"] == "utt-a"


def test_parquet_configured_audio_column(local_corpora):
    units = [u for u in plan_units(local_corpora.parquet) if "00001" in u.unit_id]
    items = list(read_unit(units[0], audio_column="recording"))
    assert [it.error for it in items] == [None, None]
    missing = list(read_unit(units[0], audio_column="nope"))
    assert len(missing) == 1 and missing[0].error.reason == "no_audio_column"


def test_manifest_resolution_and_duplicate_ids(tmp_path, local_corpora):
    units = plan_units(local_corpora.manifest_jsonl, files_per_unit=2)
    assert [u.row_range for u in units] == [(0, 2), (2, 4), (4, 6)]
    items = {it.item_id: it for it in _read_all(units, None)}
    assert items["m5"].source_uri.endswith("/man/audio/c d.wav")
    # Editing a row changes the id of its unit only (not mistaken for committed work).
    text = Path(local_corpora.manifest_jsonl).read_text()
    edited = tmp_path / "man"
    shutil.copytree(Path(local_corpora.manifest_jsonl).parent, edited)
    (edited / "manifest.jsonl").write_text(text.replace('"speaker": 3', '"speaker": 4'))
    units2 = plan_units(str(edited / "manifest.jsonl"), files_per_unit=2)
    changed = [a.unit_id != b.unit_id for a, b in zip(units, units2, strict=True)]
    assert changed == [True, False, False]  # m2 (row 1) lives in the first unit
    # Repeated rows and reused ids are error rows of the later rows, never a failed plan.
    (edited / "dup.jsonl").write_text(
        '{"id": "a", "audio": "audio/a.wav"}\n{"id": "a", "audio": "audio/c d.wav"}\n'
        '{"id": "a", "audio": "audio/a.wav"}\n'
    )
    dup = {it.item_id: it for it in _read_all(plan_units(str(edited / "dup.jsonl")), None)}
    assert sorted(dup) == ["a", "a#dup1", "a#dup2"]
    assert dup["a"].error is None
    assert dup["a#dup1"].error.reason == "duplicate_id"
    assert dup["a#dup2"].error.reason == "duplicate_item"


def test_aws_env_routes_planning_and_reading(s3_corpora, aws_env):
    units = plan_units(s3_corpora.manifest_csv)  # no storage_options: env vars only
    items = _read_all(units, None)
    assert {it.item_id for it in items} == {i.item_id for i in s3_corpora.specs["manifest_csv"].items}
    assert items[0].source_uri.startswith("s3://semtok-sources/man/audio/")


def test_safe_relpath():
    assert safe_relpath("../x.wav") == "x.wav"
    assert safe_relpath("/abs/../../p.wav") == "abs/p.wav"
    assert safe_relpath("a\\..\\b\x00c") == "a/b_c"
    assert safe_relpath("..") == "_"
    assert safe_relpath("日本語 clip.wav") == "日本語 clip.wav"
    assert is_unsafe_name("../x") and is_unsafe_name("/x") and is_unsafe_name("a\x00b")
    assert is_unsafe_name("C:/x") and not is_unsafe_name("a/b.c.wav")


def test_storage_outage_fails_the_unit_instead_of_recording_items_as_errors():
    """Connection refused (nothing listens on the port) outlasts the retries: the unit must fail,
    so the job stops with the storage error and a rerun redoes it; its items are not 'bad'."""
    options = {
        "key": "k",
        "secret": "s",
        "endpoint_url": "http://127.0.0.1:9",
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    unit = InputUnit(unit_id="files-x", kind="files", uris=("s3://bucket/a.wav",), root="s3://bucket")
    with pytest.raises(Exception) as raised:
        list(read_unit(unit, storage_options=options))
    from pipeline.io.storage import is_transient

    assert is_transient(raised.value)


def test_glob_characters_in_folder_names_are_literal(tmp_path, tiny_wav_bytes):
    """Real folder names contain [ ] * ? {: only glob= is a pattern."""
    weird = tmp_path / "set [v1] *take? {a,b}"
    (weird / "sub").mkdir(parents=True)
    (weird / "a.wav").write_bytes(tiny_wav_bytes)
    (weird / "sub" / "b.wav").write_bytes(tiny_wav_bytes)
    (tmp_path / "set v take").mkdir()  # what a glob would have matched instead
    (tmp_path / "set v take" / "decoy.wav").write_bytes(tiny_wav_bytes)
    ids = sorted(it.item_id for u in plan_units(str(weird)) for it in read_unit(u))
    assert ids == ["a.wav", "sub/b.wav"]
    only_sub = plan_units(str(weird), glob="sub/*.wav")
    assert [it.item_id for u in only_sub for it in read_unit(u)] == ["sub/b.wav"]
    with pytest.raises(FileNotFoundError):  # a pattern in the URL is no pattern: no such folder
        plan_units(str(tmp_path / "set [v] take"))
