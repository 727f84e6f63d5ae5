"""Which dataset version of a semtok output a reader means, and the codec fingerprint it carries.

A user names an output root (one version under it, or `version=`) or a version folder itself; both
resolve here to `(fs, OutputLayout)` so the loader, the token layout and the exporter agree on
what "the output at URL" is.
"""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec

from pipeline.dataset.layout import MANIFEST_DIR, RUNS_DIR, OutputLayout
from pipeline.dataset.manifest import read_manifest
from pipeline.dataset.parquet_writer import read_fingerprint
from pipeline.dataset.run_records import read_run_records
from pipeline.dataset.versions import dataset_versions
from pipeline.io.storage import open_filesystem, redact_uri, with_retries

__all__ = ["OutputSource", "resolve_output"]


@dataclass(frozen=True)
class OutputSource:
    """One dataset version of an output, opened: the file system and the version's layout."""

    fs: fsspec.AbstractFileSystem
    layout: OutputLayout

    @property
    def url(self) -> str:
        """The version folder, credentials removed (for messages)."""
        return redact_uri(self.layout.version_url)

    def manifest(self) -> dict[str, dict[str, Any]]:
        """Committed units (unit id → entry), read through the dataset's one manifest reader."""
        return with_retries(lambda: read_manifest(self.fs, self.layout))

    def token_files(self, manifest: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
        """Paths of the committed token Parquet files, in unit order (the manifest's order)."""
        entries = self.manifest() if manifest is None else manifest
        return [
            self.layout.path(f["path"])
            for _, entry in sorted(entries.items())
            for f in entry["files"]
            if f["kind"] == "tokens"
        ]

    def fingerprint(self) -> dict[str, Any]:
        """The codec fingerprint of the version: from a token file's metadata, else its newest run
        record. ValueError when neither exists (nothing committed and no run recorded)."""
        for path in self.token_files()[:1]:
            found = with_retries(functools.partial(read_fingerprint, self.fs, path))
            if found:
                return found
        records = with_retries(lambda: read_run_records(self.fs, self.layout))
        for _, record in sorted(records.items(), reverse=True):
            if isinstance(record.get("fingerprint"), dict):
                return dict(record["fingerprint"])
        raise ValueError(f"{self.url} records no codec fingerprint (no committed tokens, no run record)")


def resolve_output(
    url: str, *, storage_options: Mapping[str, Any] | None = None, version: str | None = None
) -> OutputSource:
    """The version an URL means: `version` under the root `url`; else `url` itself when it is a
    version folder (holds `_manifest/` or `runs/`); else the only version under the root.
    FileNotFoundError / ValueError (one line) when there is none or the choice is ambiguous."""
    fs, path = open_filesystem(url, storage_options)
    root_url = url.rstrip("/") or "/"
    if version is None:
        base = path.rstrip("/")
        is_version = with_retries(
            lambda: fs.exists(f"{base}/{MANIFEST_DIR}") or fs.exists(f"{base}/{RUNS_DIR}")
        )
        if is_version and posixpath.basename(base):
            parent_url, sep, name = root_url.rpartition("/")
            # "/v" lies under "/", a bare relative "v" under the working directory
            return OutputSource(fs, OutputLayout(parent_url or ("/" if sep else "."), name))
        found = dataset_versions(fs, path)
        if not found:
            raise FileNotFoundError(f"no semtok dataset version under {redact_uri(url)}")
        if len(found) > 1:
            raise ValueError(
                f"{redact_uri(url)} holds {len(found)} dataset versions ({', '.join(found)}): pass version="
            )
        version = found[0]
    else:
        dataset_versions(fs, path, version)  # raises, naming what exists, when it is misspelled
    return OutputSource(fs, OutputLayout(root_url, version))
