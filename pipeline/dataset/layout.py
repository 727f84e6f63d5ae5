"""Where the outputs of a dataset version go, and the one primitive that puts bytes there.

Every name here is a pure function of (root, version, unit id): the same unit always lands at the
same final names, which is what makes a rerun overwrite instead of duplicate. `publish` is the only
way bytes reach a final name, so every object a reader can see is whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")

TOKENS_DIR = "tokens"
ERRORS_DIR = "errors"
WDS_DIR = "wds"
MANIFEST_DIR = "_manifest"
RUNS_DIR = "runs"
TMP_DIR = "_tmp"
AUDITS_DIR = "audits"  # quality audits: one folder each (report, JSON, media)
README = "README.md"
LOCK_NAME = "_lock.json"  # the writer lease of a version (pipeline.dataset.lease)


def check_safe_id(value: str, what: str = "id") -> str:
    """Refuse names that could escape their folder or hide; they become object names verbatim."""
    if not isinstance(value, str) or not SAFE_ID.match(value) or value in (".", ".."):
        raise ValueError(f"unsafe {what} {value!r}: use [A-Za-z0-9._-], not starting with '.'")
    return value


def canonical_json(value: Any) -> str:
    """One spelling per value, so that digests of equal configs are equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a codec fingerprint."""
    return hashlib.sha256(canonical_json(fingerprint).encode("utf-8")).hexdigest()


def _name_part(value: Any) -> str:
    text = re.sub(r"[^A-Za-z0-9]+", "", str(value)).lower()
    return text[:24] or "x"


# Fingerprint fields that say where tokens came from but not what they are: the package version
# (the codec's `tokens_version` changes when its tokens do) and where the weights were read from
# (`weights_digest` identifies their content). Moving weights or upgrading semtok keeps the version.
PROVENANCE_FIELDS = ("codec_version", "weights")


def dataset_version(fingerprint: dict[str, Any]) -> str:
    """Folder name of the tokens a codec config makes: readable prefix + digest of their identity.

    The digest covers every field that shapes the tokens (codec, rates, vocabularies, weights
    digest, channel policy, resampler, dtype…), so tokens of different configs never mix; the
    prefix is only for humans.
    """
    codec = _name_part(fingerprint.get("codec", "codec"))
    parts = [codec]
    if "token_rate" in fingerprint:
        parts.append(f"r{_name_part(fingerprint['token_rate'])}")
    if "semantic_vocab_size" in fingerprint:
        parts.append(f"v{_name_part(fingerprint['semantic_vocab_size'])}")
    identity = {k: v for k, v in fingerprint.items() if k not in PROVENANCE_FIELDS}
    parts.append(fingerprint_digest(identity)[:10])
    return check_safe_id("-".join(parts), "dataset version")


def new_attempt_id(run_id: str = "") -> str:
    """A name no other attempt uses, for temporary files: `<run id>-<random>` when the run is known
    (so cleanup can tell whose attempt a leftover is), else `<random>`."""
    if run_id:
        return f"{check_safe_id(run_id, 'run id')}-{uuid.uuid4().hex}"
    return uuid.uuid4().hex


def attempt_run_id(attempt_id: str) -> str | None:
    """The run id an attempt id (`new_attempt_id`) was made for, or None for anonymous ones."""
    run_id, sep, rest = attempt_id.rpartition("-")
    if not sep or not run_id or len(rest) != 32:
        return None
    return run_id


@dataclass(frozen=True)
class OutputLayout:
    """Paths of one dataset version under an output root (any fsspec URL or local path)."""

    root_url: str
    version: str

    def __post_init__(self) -> None:
        check_safe_id(self.version, "dataset version")
        object.__setattr__(self, "root_url", self.root_url.rstrip("/") or "/")

    @classmethod
    def for_fingerprint(cls, root_url: str, fingerprint: dict[str, Any]) -> OutputLayout:
        """The layout of the version a codec fingerprint names."""
        return cls(root_url, dataset_version(fingerprint))

    @property
    def version_url(self) -> str:
        """The version folder; every other path lies under it."""
        return f"{self.root_url.rstrip('/')}/{self.version}"

    def path(self, rel: str) -> str:
        """Absolute path (same scheme as the root) of a path relative to the version folder."""
        if rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"not a relative path inside the version: {rel!r}")
        return f"{self.version_url}/{rel}"

    # Relative names: these are what the manifest records.
    @staticmethod
    def tokens_rel(unit_id: str) -> str:
        return f"{TOKENS_DIR}/part-{check_safe_id(unit_id, 'unit id')}.parquet"

    @staticmethod
    def errors_rel(unit_id: str) -> str:
        return f"{ERRORS_DIR}/part-{check_safe_id(unit_id, 'unit id')}.parquet"

    @staticmethod
    def wds_rel(unit_id: str) -> str:
        return f"{WDS_DIR}/{check_safe_id(unit_id, 'unit id')}.tar"

    @staticmethod
    def manifest_rel(unit_id: str) -> str:
        return f"{MANIFEST_DIR}/{check_safe_id(unit_id, 'unit id')}.json"

    @staticmethod
    def run_rel(run_id: str) -> str:
        return f"{RUNS_DIR}/{check_safe_id(run_id, 'run id')}.json"

    # Absolute paths.
    def tokens_path(self, unit_id: str) -> str:
        return self.path(self.tokens_rel(unit_id))

    def errors_path(self, unit_id: str) -> str:
        return self.path(self.errors_rel(unit_id))

    def wds_path(self, unit_id: str) -> str:
        return self.path(self.wds_rel(unit_id))

    def manifest_path(self, unit_id: str) -> str:
        return self.path(self.manifest_rel(unit_id))

    def run_path(self, run_id: str) -> str:
        return self.path(self.run_rel(run_id))

    @property
    def manifest_dir(self) -> str:
        return self.path(MANIFEST_DIR)

    @property
    def tokens_dir(self) -> str:
        return self.path(TOKENS_DIR)

    @property
    def runs_dir(self) -> str:
        return self.path(RUNS_DIR)

    @property
    def readme_path(self) -> str:
        return self.path(README)

    @property
    def lock_path(self) -> str:
        """The writer lease of the version (`_lock.json`)."""
        return self.path(LOCK_NAME)

    @property
    def tmp_root(self) -> str:
        return self.path(TMP_DIR)

    def audit_dir(self, audit_id: str) -> str:
        """Folder of one audit report (index.html, audit.json, media/, plots/)."""
        return self.path(f"{AUDITS_DIR}/{check_safe_id(audit_id, 'audit id')}")

    def tmp_dir(self, attempt_id: str) -> str:
        """Scratch folder of one attempt; cleanup removes whole attempt folders."""
        return self.path(f"{TMP_DIR}/{check_safe_id(attempt_id, 'attempt id')}")


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True where rename is a real, atomic file-system rename."""
    return isinstance(fs, LocalFileSystem)


def publish(fs: fsspec.AbstractFileSystem, path: str, data: bytes, *, tmp_dir: str | None = None) -> None:
    """Make `path` hold exactly `data`, atomically: readers see the old object or the new, whole.

    Local disks: write a temporary file, fsync, then os.replace (atomic on POSIX). The temporary
    file goes to `tmp_dir` when given (it must be on the same file system; cleanup finds
    leftovers there) or next to the target under a hidden name. Object stores have no rename
    (s3 "mv" is copy + delete), but a single PUT is atomic, so they get one `pipe_file`.
    """
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    final = fs._strip_protocol(path)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    suffix = f"{os.path.basename(final)}.tmp-{uuid.uuid4().hex}"
    if tmp_dir is not None:
        tmp_parent = fs._strip_protocol(tmp_dir)
        os.makedirs(tmp_parent, exist_ok=True)
        tmp = os.path.join(tmp_parent, suffix)
    else:
        tmp = os.path.join(parent, "." + suffix)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(parent)


def _fsync_dir(path: str) -> None:
    """Persist the rename itself; best effort (not every platform lets a folder be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
