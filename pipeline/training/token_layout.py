"""The flat vocabulary a language model sees: SemantiCodec's two token streams as one id sequence.

A semtok output stores, per item, `semantic_tokens` and `acoustic_tokens` (two `list<uint16>`
columns of equal length `n_frames`, see pipeline/dataset/parquet_writer.py). A decoder-only LM
wants one stream of ids over one vocabulary; this module fixes that vocabulary and the order of the
two streams, and inverts it exactly.

Flat vocabulary, with S = semantic_vocab_size and A = acoustic_vocab_size (from the output's
codec fingerprint; A is 8192 for SemantiCodec):

    ids [0, S)          semantic token s            (id = s)
    ids [S, S + A)      acoustic token a            (id = S + a)
    S + A               BOS   begin of an item
    S + A + 1           EOS   end of an item
    S + A + 2           PAD   padding (never inside an item; packing/collate use it)
    S + A + 3           SEP   between the semantic and the acoustic half (order="sequential" only)
    vocab_size = S + A + 4

Orders (n = n_frames):
    interleaved:  BOS s0 a0 s1 a1 … s(n-1) a(n-1) EOS          (2n + 2 ids)
    sequential:   BOS s0 s1 … s(n-1) SEP a0 a1 … a(n-1) EOS      (2n + 3 ids)

`add_bos_eos=False` drops BOS/EOS (not SEP). Ids are stored as uint16 when the vocabulary fits
(every SemantiCodec configuration does: 32768 + 8192 + 4 < 65536), else uint32 (`dtype`).
`to_json` is the vocabulary file shipped beside exported token streams; `from_json` refuses a
file whose derived ids disagree with this scheme instead of silently shifting every token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pipeline.training.source import resolve_output

__all__ = ["ACOUSTIC_VOCAB_SIZE", "FORMAT", "ORDERS", "TokenLayout"]

# SemantiCodec's acoustic codebook size, equal to codec.config.ACOUSTIC_VOCAB (a test keeps the two
# equal): not imported from there, because importing the codec package loads torch.
ACOUSTIC_VOCAB_SIZE = 8192
ORDERS = ("interleaved", "sequential")
FORMAT = "semtok.token_layout"
FORMAT_VERSION = 1
SPECIAL_TOKENS = ("bos", "eos", "pad", "sep")
UINT16_IDS = 1 << 16

Order = Literal["interleaved", "sequential"]


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _tokens(values: Any, name: str, limit: int) -> np.ndarray:
    """A 1-D integer array with every value in [0, limit), as int64 (ValueError otherwise)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got {array.dtype}")
    array = array.astype(np.int64, copy=False)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= limit:
        raise ValueError(f"{name} values in [{low}, {high}] outside [0, {limit})")
    return array


@dataclass(frozen=True)
class TokenLayout:
    """The flat LM vocabulary of one codec configuration and stream order (module docstring)."""

    semantic_vocab_size: int
    acoustic_vocab_size: int = ACOUSTIC_VOCAB_SIZE
    order: Order = "interleaved"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "semantic_vocab_size", _positive_int(self.semantic_vocab_size, "semantic_vocab_size")
        )
        object.__setattr__(
            self, "acoustic_vocab_size", _positive_int(self.acoustic_vocab_size, "acoustic_vocab_size")
        )
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")

    # --- ids -------------------------------------------------------------------------------
    @property
    def acoustic_offset(self) -> int:
        """Flat id of acoustic token 0."""
        return self.semantic_vocab_size

    @property
    def bos_id(self) -> int:
        return self.semantic_vocab_size + self.acoustic_vocab_size

    @property
    def eos_id(self) -> int:
        return self.bos_id + 1

    @property
    def pad_id(self) -> int:
        return self.bos_id + 2

    @property
    def sep_id(self) -> int:
        return self.bos_id + 3

    @property
    def vocab_size(self) -> int:
        return self.bos_id + len(SPECIAL_TOKENS)

    @property
    def dtype(self) -> np.dtype:
        """The narrowest unsigned dtype that holds every id (uint16 for all SemantiCodec configs)."""
        return np.dtype(np.uint16 if self.vocab_size <= UINT16_IDS else np.uint32)

    @property
    def stream_dtype(self) -> np.dtype:
        """What `decode` returns the two token streams as: uint16 (a semtok output's own column type)
        unless a vocabulary is wider, where uint16 would wrap ids silently."""
        widest = max(self.semantic_vocab_size, self.acoustic_vocab_size)
        return np.dtype(np.uint16 if widest <= UINT16_IDS else np.uint32)

    @property
    def special_ids(self) -> dict[str, int]:
        return {name: self.bos_id + i for i, name in enumerate(SPECIAL_TOKENS)}

    def n_ids(self, n_frames: int, *, add_bos_eos: bool = True) -> int:
        """Length of the flat stream of an item of `n_frames` frames."""
        return 2 * int(n_frames) + (2 if add_bos_eos else 0) + (self.order == "sequential")

    # --- encode / decode -------------------------------------------------------------------
    def encode(self, semantic: Any, acoustic: Any, *, add_bos_eos: bool = True) -> np.ndarray:
        """One item's token streams → its flat ids (`dtype`). ValueError when the streams differ in
        length or hold values outside their vocabularies."""
        sem = _tokens(semantic, "semantic", self.semantic_vocab_size)
        aco = _tokens(acoustic, "acoustic", self.acoustic_vocab_size)
        if sem.shape != aco.shape:
            raise ValueError(f"semantic has {sem.size} frames, acoustic {aco.size}")
        n = sem.size
        start = 1 if add_bos_eos else 0
        out = np.empty(self.n_ids(n, add_bos_eos=add_bos_eos), dtype=self.dtype)
        if self.order == "interleaved":
            out[start : start + 2 * n : 2] = sem
            out[start + 1 : start + 2 * n : 2] = aco + self.acoustic_offset
        else:
            out[start : start + n] = sem
            out[start + n] = self.sep_id
            out[start + n + 1 : start + 2 * n + 1] = aco + self.acoustic_offset
        if add_bos_eos:
            out[0], out[-1] = self.bos_id, self.eos_id
        return out

    def decode(self, ids: Any, *, bos_eos: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Flat ids of one item → (semantic, acoustic) as `stream_dtype` arrays (uint16 for every
        SemantiCodec configuration); the exact inverse of `encode`. Strict: ValueError for anything
        `encode` could not have produced (ids out of the vocabulary, PAD, a token of one stream
        where the other belongs, a missing/extra SEP, unequal halves, a lone BOS or EOS).
        `bos_eos`: True requires BOS…EOS, False forbids them, None accepts either (but both or
        neither)."""
        array = np.asarray(ids)
        if array.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {array.shape}")
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"ids must be integers, got {array.dtype}")
        flat = array.astype(np.int64, copy=False)
        if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= self.vocab_size):
            raise ValueError(f"ids outside [0, {self.vocab_size})")
        framed = flat.size >= 1 and int(flat[0]) == self.bos_id
        if framed:
            if flat.size < 2 or int(flat[-1]) != self.eos_id:
                raise ValueError("stream starts with BOS but does not end with EOS")
            flat = flat[1:-1]
        if bos_eos is True and not framed:
            raise ValueError("stream does not start with BOS")
        if bos_eos is False and framed:
            raise ValueError("stream starts with BOS but bos_eos=False")
        for name in ("bos", "eos", "pad"):
            where = np.flatnonzero(flat == getattr(self, f"{name}_id"))
            if where.size:
                raise ValueError(f"{name.upper()} inside the stream (position {int(where[0]) + framed})")
        S, A = self.semantic_vocab_size, self.acoustic_vocab_size
        is_sem = flat < S
        is_aco = (flat >= S) & (flat < S + A)
        if self.order == "interleaved":
            if (flat == self.sep_id).any():
                raise ValueError("SEP in an interleaved stream")
            if flat.size % 2:
                raise ValueError(f"interleaved stream of odd length {flat.size}")
            bad = np.flatnonzero(~is_sem[0::2])
            if bad.size:
                raise ValueError(f"non-semantic id at semantic slot {int(bad[0])}")
            bad = np.flatnonzero(~is_aco[1::2])
            if bad.size:
                raise ValueError(f"non-acoustic id at acoustic slot {int(bad[0])}")
            semantic, acoustic = flat[0::2], flat[1::2]
        else:
            seps = np.flatnonzero(flat == self.sep_id)
            if seps.size != 1:
                raise ValueError(f"sequential stream needs exactly one SEP, found {seps.size}")
            cut = int(seps[0])
            semantic, acoustic = flat[:cut], flat[cut + 1 :]
            if semantic.size != acoustic.size:
                raise ValueError(f"{semantic.size} semantic but {acoustic.size} acoustic ids")
            if not is_sem[:cut].all():
                raise ValueError("non-semantic id before SEP")
            if not is_aco[cut + 1 :].all():
                raise ValueError("non-acoustic id after SEP")
        out = self.stream_dtype
        return semantic.astype(out), (acoustic - self.acoustic_offset).astype(out)

    # --- the vocabulary file ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The vocabulary as plain JSON values: the parameters plus every derived id, so a reader in
        another language needs no copy of this module."""
        S, A = self.semantic_vocab_size, self.acoustic_vocab_size
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "semantic_vocab_size": S,
            "acoustic_vocab_size": A,
            "order": self.order,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype.name,
            "ranges": {"semantic": [0, S], "acoustic": [S, S + A]},
            "special_tokens": self.special_ids,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenLayout:
        """Inverse of `to_dict`. ValueError when the format is foreign or a derived field stored in
        `data` disagrees with the one this scheme derives (a file from another scheme)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a token layout is a JSON object, got {type(data).__name__}")
        if data.get("format", FORMAT) != FORMAT:
            raise ValueError(f"not a semtok token layout (format {data.get('format')!r})")
        if int(data.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
            raise ValueError(f"token layout format_version {data['format_version']} is newer than semtok's")
        if "semantic_vocab_size" not in data:
            raise ValueError("token layout lacks semantic_vocab_size")
        layout = cls(
            data["semantic_vocab_size"],
            data.get("acoustic_vocab_size", ACOUSTIC_VOCAB_SIZE),
            data.get("order", "interleaved"),
        )
        derived = layout.to_dict()
        for key in ("vocab_size", "dtype", "ranges", "special_tokens"):
            if key in data and json.loads(json.dumps(data[key])) != derived[key]:
                raise ValueError(f"token layout {key}={data[key]!r} disagrees with {derived[key]!r}")
        return layout

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> TokenLayout:
        try:
            data = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"token layout is not valid JSON: {error}") from None
        return cls.from_dict(data)

    # --- from an output --------------------------------------------------------------------
    @classmethod
    def for_fingerprint(cls, fingerprint: Mapping[str, Any], *, order: Order = "interleaved") -> TokenLayout:
        """The layout of the tokens a codec fingerprint describes."""
        if "semantic_vocab_size" not in fingerprint:
            raise ValueError("codec fingerprint lacks semantic_vocab_size")
        return cls(
            fingerprint["semantic_vocab_size"],
            fingerprint.get("acoustic_vocab_size", ACOUSTIC_VOCAB_SIZE),
            order,
        )

    @classmethod
    def for_output(
        cls,
        url: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        version: str | None = None,
        order: Order = "interleaved",
    ) -> TokenLayout:
        """The layout of a semtok output's tokens, from the fingerprint it records. `url` is an
        output root (with `version=` when it holds several) or a version folder."""
        source = resolve_output(url, storage_options=storage_options, version=version)
        return cls.for_fingerprint(source.fingerprint(), order=order)
