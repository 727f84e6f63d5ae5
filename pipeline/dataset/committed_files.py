"""The input files a version's committed `files` units read, held compactly for planning a rerun.

Why: a rerun checks every listed input file against what is committed (skip it, redo it when its
stamp changed, report it when it is gone). As Python dicts and strings that costs ~330 bytes per
committed file, 3.3 GB of driver memory at 10⁷ files. Here each file is a 128-bit digest of its
URI, a 64-bit digest of its recorded stamp and its unit's number, in sorted numpy arrays: ~30 bytes
per file, plus what the listing marks (seen, current stamp digest). With 128-bit digests a new file
taken for a committed one (and skipped) is ~10⁻²⁴ likely at 10⁷ files listed against 10⁷.

The URI strings themselves are not kept: the few units whose files changed or vanished are
re-read from the manifest once the listing ends (`pipeline/tokenize/work_plan.py`).

    files = CommittedFiles()
    files.add_unit("u1", ["file:///a.wav", "file:///b.wav"], ["s:1;m:5", "s:2;m:5"])
    files.freeze()
    "file:///a.wav" in files                  # True: listed files matching it are skipped
    files["file:///a.wav"] = "s:9;m:7"        # the listing saw it, with another stamp
    files.changed_units(), files.unseen_units()   # ({"u1"}, {"u1"}): a changed, b gone
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Sequence

import numpy as np

__all__ = ["CommittedFiles"]

_NO_STAMP = np.uint64(0)  # a file committed without a stamp is never "changed"


def _uri_key(uri: str) -> bytes:
    """128-bit digest whose last byte is never 0: numpy's fixed-width bytes drop trailing zero
    bytes when an element is read back, which would make such a key never match itself."""
    digest = hashlib.blake2b(uri.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return digest[:15] + bytes([digest[15] | 1])


def _stamp_key(stamp: str) -> np.uint64:
    if not stamp:
        return _NO_STAMP
    digest = hashlib.blake2b(stamp.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return np.uint64(value or 1)


class CommittedFiles:
    """Committed file URI → (unit, recorded stamp), and what the current listing saw of each.

    Build with `add_unit` (a unit added again replaces its earlier files: a newer entry wins),
    then `freeze`. The listing uses it as `exclude_uris` (`in`) and as `seen` (item assignment:
    the file is still listed, with this stamp)."""

    def __init__(self) -> None:
        self._building: dict[str, tuple[bytes, bytes]] | None = {}
        self._unit_ids: list[str] = []
        self._keys = np.empty(0, dtype="S16")
        self._stamps = np.empty(0, dtype=np.uint64)
        self._units = np.empty(0, dtype=np.int32)
        self._seen = np.empty(0, dtype=bool)
        self._current = np.empty(0, dtype=np.uint64)
        self._current_text: dict[int, str] = {}  # current stamps: changed, or none was recorded
        self._changed: set[int] = set()  # positions whose current stamp differs from the recorded
        self._last: tuple[str | None, int] = (None, -1)

    def add_unit(self, unit_id: str, uris: Sequence[str], stamps: Sequence[str]) -> None:
        if self._building is None:
            raise RuntimeError("CommittedFiles is frozen")
        keys = b"".join(_uri_key(str(uri)) for uri in uris)
        recorded = np.array(
            [_stamp_key(str(stamps[i])) if i < len(stamps) else _NO_STAMP for i in range(len(uris))],
            dtype=np.uint64,
        )
        self._building[unit_id] = (keys, recorded.tobytes())

    def retain(self, unit_ids: Container[str]) -> None:
        """Keep only these units: a reader may have handed over entries it then found superseded
        by a damaged newer one, or read from an index it then found damaged (their files must be
        planned again, not skipped)."""
        if self._building is None:
            raise RuntimeError("CommittedFiles is frozen")
        for unit_id in [u for u in self._building if u not in unit_ids]:
            del self._building[unit_id]

    def freeze(self) -> CommittedFiles:
        """Sort the digests for lookups; no unit can be added after."""
        building, self._building = self._building or {}, None
        self._unit_ids = sorted(building)
        keys = [building[u][0] for u in self._unit_ids]
        counts = np.array([len(k) // 16 for k in keys], dtype=np.int64)
        all_keys = np.frombuffer(b"".join(keys), dtype="S16")
        stamps = np.frombuffer(b"".join(building[u][1] for u in self._unit_ids), dtype=np.uint64)
        units = np.repeat(np.arange(len(self._unit_ids), dtype=np.int32), counts)
        building.clear()
        order = np.argsort(all_keys, kind="stable")
        self._keys, self._stamps, self._units = all_keys[order], stamps[order], units[order]
        self._seen = np.zeros(len(self._keys), dtype=bool)
        self._current = np.zeros(len(self._keys), dtype=np.uint64)
        return self

    def _index(self, uri: object) -> int:
        """Position of `uri`'s digest, -1 when not committed (the last answer is kept: the listing
        asks `in` and then marks the same URI)."""
        if not isinstance(uri, str) or not len(self._keys):
            return -1
        if uri == self._last[0]:
            return self._last[1]
        key = _uri_key(uri)
        at = int(self._keys.searchsorted(key))  # a bytes query: ~0.5 µs, no numpy scalar made
        found = at if at < len(self._keys) and self._keys[at] == key else -1
        self._last = (uri, found)
        return found

    def __contains__(self, uri: object) -> bool:
        return self._index(uri) >= 0

    def __len__(self) -> int:
        return len(self._keys)

    def __setitem__(self, uri: str, stamp: str) -> None:
        """The listing saw committed file `uri` with its current `stamp`."""
        at = self._index(uri)
        if at < 0:
            return
        self._seen[at] = True
        self._current[at] = _stamp_key(stamp)
        if self._stamps[at] == _NO_STAMP:
            self._current_text[at] = stamp  # a redone unit records it: later reruns can compare
        elif self._current[at] != self._stamps[at]:
            self._current_text[at] = stamp
            self._changed.add(at)

    def seen(self, uri: str) -> bool:
        at = self._index(uri)
        return at >= 0 and bool(self._seen[at])

    def current_stamp(self, uri: str) -> str | None:
        """The stamp the listing saw for `uri` when it differs from the recorded one (or none was
        recorded), else None: the recorded one is current."""
        return self._current_text.get(self._index(uri))

    def is_changed(self, uri: str) -> bool:
        at = self._index(uri)
        return at >= 0 and at in self._changed

    def _unit_names(self, mask: np.ndarray) -> set[str]:
        return {self._unit_ids[u] for u in np.unique(self._units[mask])}

    def changed_units(self) -> set[str]:
        """Units with a file still listed whose stamp differs from the recorded one."""
        if not self._changed:
            return set()
        return self._unit_names(np.fromiter(self._changed, dtype=np.int64))

    def unseen_units(self) -> set[str]:
        """Units with a file the listing did not see (deleted, or moved out of the input)."""
        return self._unit_names(~self._seen)
