"""The audit's Ray Data stages: re-read originals (CPU) → decode tokens (actor pool) → score (CPU).

Each sampled item is one row from start to end, carrying every column (a stable Arrow schema).
An item that cannot be audited — its original is gone or changed, decoding fails, a metric cannot
run — keeps its row with `stage`/`reason`/`detail` set, so the report accounts for every sampled
item; nothing here raises for one bad item.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from codec import CodecSpec, build_codec
from pipeline.audit.quality_metrics import DEFAULT_METRICS, score_pair, scores_to_json
from pipeline.config import ChannelPolicy
from pipeline.io.audio_decoding import DEFAULT_MAX_SPILL_BYTES, AudioDecodeError, SpilledAudio
from pipeline.io.isolated_decode import DEFAULT_MAX_MEMORY_BYTES, DEFAULT_TIMEOUT_S, shared_decoder
from pipeline.io.sources import DEFAULT_POLICY, ReadPolicy, read_unit
from pipeline.io.spill_files import DEFAULT_STREAM_MIN_SECONDS, new_spill_path, remove_quietly, spill_folder
from pipeline.io.spool import DEFAULT_SPOOL_MIN_BYTES, Spooler
from pipeline.records import InputUnit

log = logging.getLogger(__name__)

# Decoded duration and the committed one may differ by float rounding only.
_DURATION_TOLERANCE_S = 1e-3


def empty_audit_row() -> dict[str, Any]:
    return {
        "item_id": "",
        "unit_id": "",
        "source": "",
        "domain": "",
        "decode_seed": 0,
        "tokens": b"",
        "n_frames": 0,
        "duration_s": 0.0,
        "reference": b"",
        "reconstruction": b"",
        "decode_seconds": 0.0,
        "score_seconds": 0.0,
        "scores": "",
        "stage": "",
        "reason": "",
        "detail": "",
    }


def _failed(row: dict[str, Any], stage: str, reason: str, detail: str) -> dict[str, Any]:
    row.update(stage=stage, reason=reason, detail=detail[:2000], reference=b"", reconstruction=b"")
    return row


@dataclass(frozen=True)
class AuditItem:
    """What the driver knows of a sampled item before the originals are read."""

    item_id: str
    source: str
    domain: str
    decode_seed: int
    tokens: np.ndarray  # uint16 [n_frames, 2]: the first frames, as many as the audit decodes
    duration_s: float  # the whole item's committed duration

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "source": self.source,
            "domain": self.domain,
            "decode_seed": self.decode_seed,
            "tokens": self.tokens.astype(np.uint16).tobytes().hex(),
            "n_frames": int(self.tokens.shape[0]),
            "duration_s": self.duration_s,
        }


class ReadOriginals:
    """Callable for `flat_map`: {"unit": json, "items": json} → one row per sampled item.

    Reads the unit through the same readers as tokenize (so tar members, Parquet rows and
    manifests resolve the same way), stops as soon as every wanted item was seen, and decodes
    with the tokenize job's channel policy: the reference is the audio the codec was given.
    Originals are read and decoded as tokenize reads and decodes them: with its read policy
    (`read_policy`: size, time, links), big ones copied to a local file in chunks
    (`spool_min_bytes`), decoding in a child process (`pipeline.io.isolated_decode`: an original
    replaced since by one that crashes or hangs the decoder is an error row, not a dead worker that
    Ray retries without end), and one of `stream_min_seconds` or longer decoded to a local spill
    file (`spill_dir`) of which only the audited start is read back. So a multi-hour original costs
    the audit no more memory than a short one.
    """

    def __init__(
        self,
        *,
        max_samples: int,
        channel_policy: ChannelPolicy,
        max_audio_seconds: float | None,
        storage_options: dict | None = None,
        audio_column: str | None = None,
        uri_column: str | None = None,
        decode_options: dict[str, Any] | None = None,
        decode_fn: str | None = None,
        read_policy: ReadPolicy = DEFAULT_POLICY,
        item_timeout_s: float | None = DEFAULT_TIMEOUT_S,
        max_decode_memory_bytes: int | None = DEFAULT_MAX_MEMORY_BYTES,
        spool_min_bytes: int | None = DEFAULT_SPOOL_MIN_BYTES,
        stream_min_seconds: float | None = DEFAULT_STREAM_MIN_SECONDS,
        max_spill_bytes: int | None = DEFAULT_MAX_SPILL_BYTES,
        spill_dir: str | None = None,
    ) -> None:
        self.max_samples = max_samples  # the audited start of each item (its tokens are cut to match)
        self.channel_policy = channel_policy
        self.max_audio_seconds = max_audio_seconds
        self.storage_options = storage_options or {}
        self.audio_column = audio_column
        self.uri_column = uri_column
        self.decode_options = dict(decode_options or {})  # tokenize's: resampler, max_decoded_bytes
        self.decode_fn = decode_fn  # "module:function" run in the decode process (tests name theirs)
        self.read_policy = read_policy
        self.item_timeout_s = item_timeout_s
        self.max_decode_memory_bytes = max_decode_memory_bytes
        self.spool_min_bytes = spool_min_bytes
        self.stream_min_seconds = stream_min_seconds
        self.max_spill_bytes = max_spill_bytes
        self.spill_dir = spill_dir

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        unit = InputUnit.from_json(row["unit"])
        wanted = {item["item_id"]: item for item in json.loads(row["items"])}
        pending = dict(wanted)
        try:
            spool = None
            if self.spool_min_bytes is not None:
                spool = Spooler(spill_folder(self.spill_dir), self.spool_min_bytes)
            for item in read_unit(
                unit,
                storage_options=self.storage_options,
                audio_column=self.audio_column,
                uri_column=self.uri_column,
                policy=self.read_policy,
                spool=spool,
            ):
                spec = pending.pop(item.item_id, None)
                if spec is None:
                    continue
                yield self._item_row(unit.unit_id, spec, item)
                if not pending:
                    break
        except Exception as error:  # noqa: BLE001 - the unit became unreadable after retries
            for spec in pending.values():
                yield _failed(
                    self._base(unit.unit_id, spec),
                    "read",
                    "original_unreadable",
                    f"{type(error).__name__}: {error}",
                )
            return
        for spec in pending.values():
            yield _failed(
                self._base(unit.unit_id, spec),
                "read",
                "original_missing",
                "the input unit no longer holds this item",
            )

    def _base(self, unit_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        row = empty_audit_row()
        row.update(
            item_id=spec["item_id"],
            unit_id=unit_id,
            source=spec["source"],
            domain=spec["domain"],
            decode_seed=int(spec["decode_seed"]),
            tokens=bytes.fromhex(spec["tokens"]),
            n_frames=int(spec["n_frames"]),
            duration_s=float(spec["duration_s"]),
        )
        return row

    def _item_row(self, unit_id: str, spec: dict[str, Any], item) -> dict[str, Any]:
        row = self._base(unit_id, spec)
        if item.error is not None:
            return _failed(row, "read", "original_unreadable", f"{item.error.reason}: {item.error.detail}")
        spill = None
        if self.stream_min_seconds is not None:
            spill = new_spill_path(spill_folder(self.spill_dir))
        try:
            options: dict[str, Any] = {
                "channel_policy": self.channel_policy,
                "name_hint": item.source_uri,
                "max_seconds": self.max_audio_seconds,
                **self.decode_options,
            }
            if spill is not None:
                options.update(
                    spill_path=spill,
                    stream_min_seconds=self.stream_min_seconds,
                    max_spill_bytes=self.max_spill_bytes,
                )
            decoder = shared_decoder(
                decode_fn=self.decode_fn,
                timeout_s=self.item_timeout_s,
                max_memory_bytes=self.max_decode_memory_bytes,
            )
            try:
                if item.path is not None:  # spooled by the reader: the decode child maps the file
                    try:
                        audio = decoder.decode_file(item.path, **options)
                    finally:
                        remove_quietly(item.path)
                else:
                    audio = decoder.decode(item.data, **options)
            except AudioDecodeError as error:
                return _failed(row, "read", "original_undecodable", f"{error.reason}: {error.detail}")
            if isinstance(audio, SpilledAudio):  # read back only the audited start
                count = min(self.max_samples, audio.num_samples)
                head = np.fromfile(audio.path, dtype=np.float32, count=count)
            else:
                head = audio.samples[: self.max_samples]
            if abs(audio.duration_s - row["duration_s"]) > _DURATION_TOLERANCE_S:
                return _failed(
                    row,
                    "read",
                    "original_changed",
                    f"the original now lasts {audio.duration_s:.3f} s, its tokens "
                    f"{row['duration_s']:.3f} s: it changed since it was tokenized",
                )
            row["reference"] = np.ascontiguousarray(head, dtype=np.float32).tobytes()
            return row
        finally:
            if spill is not None:
                remove_quietly(spill)


class DecodeActor:
    """Callable class for `map_batches` on an actor pool: one full codec replica (encoder parts
    the decoder needs + diffusion decoder) decodes a batch of items at once, each with its own
    noise seed, so an item's reconstruction does not depend on its batch-mates."""

    def __init__(
        self,
        spec: CodecSpec,
        *,
        device: str = "cpu",
        threads: int | None = None,
        steps: int = 50,
        guidance: float = 2.0,
        dtype: str = "float32",
    ) -> None:
        if device == "cpu" and threads:
            torch.set_num_threads(max(1, int(threads)))
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("decode actor was given a GPU but torch sees no CUDA device")
        options = {**spec.options, "components": ("encoder", "decoder")}
        self.codec = build_codec(CodecSpec(spec.name, options), device=device)
        self.steps, self.guidance, self.dtype = steps, guidance, dtype

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        todo = [i for i in range(len(batch["item_id"])) if not batch["stage"][i]]
        reconstructions = np.empty(len(batch["item_id"]), dtype=object)
        reconstructions[:] = [b""] * len(reconstructions)
        seconds = np.zeros(len(batch["item_id"]), dtype=np.float64)
        if todo:
            try:
                self._decode(batch, todo, reconstructions, seconds)
            except Exception as error:  # noqa: BLE001 - find the item(s) that fail
                log.warning("decode of %d items failed (%s); retrying one by one", len(todo), error)
                for i in todo:
                    try:
                        self._decode(batch, [i], reconstructions, seconds)
                    except Exception as item_error:  # noqa: BLE001 - recorded on the row
                        batch["stage"][i] = "decode"
                        batch["reason"][i] = "decode_failed"
                        batch["detail"][i] = f"{type(item_error).__name__}: {item_error}"[:2000]
        out = dict(batch)
        out["reconstruction"] = reconstructions
        out["decode_seconds"] = seconds
        return out

    def _decode(
        self, batch: dict[str, np.ndarray], rows: Sequence[int], out: np.ndarray, seconds: np.ndarray
    ) -> None:
        frames = [int(batch["n_frames"][i]) for i in rows]
        tokens = torch.zeros(len(rows), max(frames), 2, dtype=torch.int64)
        for slot, i in enumerate(rows):
            array = np.frombuffer(batch["tokens"][i], dtype=np.uint16).reshape(-1, 2)
            tokens[slot, : len(array)] = torch.from_numpy(array.astype(np.int64))
        seeds = [int(batch["decode_seed"][i]) for i in rows]
        started = time.perf_counter()
        waves, lengths = self.codec.decode_batch(
            tokens,
            torch.tensor(frames),
            steps=self.steps,
            guidance=self.guidance,
            seed=seeds,
            dtype=self.dtype,
        )
        elapsed = time.perf_counter() - started
        total_frames = sum(frames) or 1
        for slot, i in enumerate(rows):
            wave = waves[slot, : int(lengths[slot])].numpy().astype(np.float32)
            out[i] = np.ascontiguousarray(wave).tobytes()
            seconds[i] = elapsed * frames[slot] / total_frames  # batch time shared by length


def score_batch(
    batch: dict[str, np.ndarray], metrics: Sequence[str] = DEFAULT_METRICS
) -> dict[str, np.ndarray]:
    """For `map_batches` (CPU tasks): every metric of each decoded item, as JSON on its row."""
    out = dict(batch)
    scores = np.empty(len(batch["item_id"]), dtype=object)
    scores[:] = [""] * len(scores)
    spent = np.zeros(len(scores), dtype=np.float64)
    for i in range(len(scores)):
        if batch["stage"][i]:
            continue
        reference = np.frombuffer(batch["reference"][i], dtype=np.float32)
        estimate = np.frombuffer(batch["reconstruction"][i], dtype=np.float32)
        started = time.perf_counter()
        result = score_pair(reference, estimate, domain=str(batch["domain"][i]), metrics=metrics)
        spent[i] = time.perf_counter() - started
        scores[i] = json.dumps(scores_to_json(result), sort_keys=True)
    out["scores"] = scores
    out["score_seconds"] = spent
    return out
