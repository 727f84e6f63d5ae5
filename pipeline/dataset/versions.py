"""Dataset versions: one folder per job fingerprint under an output root."""

from __future__ import annotations

import functools

import fsspec

from pipeline.dataset.layout import (
    MANIFEST_DIR,
    RUNS_DIR,
)
from pipeline.io.storage import (
    with_retries,
)


def dataset_versions(fs: fsspec.AbstractFileSystem, root: str, only: str | None = None) -> list[str]:
    """Version folders under an output root (those holding a manifest or run records), or just
    `only` — which must exist: operations on a misspelled version fail loudly."""
    if only is not None:
        found = dataset_versions(fs, root)
        if only not in found:
            raise FileNotFoundError(
                f"no dataset version {only!r} under {root} (found: {', '.join(found) or 'none'})"
            )
        return [only]
    try:
        with_retries(lambda: fs.invalidate_cache(root))
        entries = with_retries(lambda: fs.ls(root, detail=True))
    except FileNotFoundError:
        return []
    versions = []
    for entry in entries:
        if entry.get("type") != "directory":
            continue
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if with_retries(functools.partial(_holds_output, fs, entry["name"])):
            versions.append(name)
    return sorted(versions)


def _holds_output(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    return bool(fs.exists(f"{path}/{MANIFEST_DIR}") or fs.exists(f"{path}/{RUNS_DIR}"))
