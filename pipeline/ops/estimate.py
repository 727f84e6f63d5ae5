"""`semtok plan`: what a tokenize job would do, measured from the input without encoding anything.

Why: before paying for a cluster, a user wants the size of the job — units, items, audio hours,
output size, encoder hours — and what an earlier run already committed. The plan is made by the
same function `run_tokenize` uses (`plan_remaining`), so it counts exactly the units a run would do.

Durations come from headers where the format allows (libsndfile's `info` for wav/flac/ogg/mp3…,
PyAV container/stream metadata for m4a/aac/webm/mp4), then go through the pipeline's own arithmetic:
samples at 16 kHz after the job's resampler (official: `ceil(frames × 16000 / rate)`) and codec token frames
(`codec.num_tokens`). Items are read with the run's read policy (what it refuses for size, time or
links is counted as the read error it will be) and still whole (`read_unit`, several units at once
in threads): header reads save the decode and resample, which is most of the CPU. An item whose
header says nothing is counted as "unknown duration": the run will most likely make it an error row.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from codec import num_tokens
from pipeline.config import ConfigError, TokenizeConfig
from pipeline.dataset.layout import OutputLayout
from pipeline.io.audio_decoding import _PYAV_FIRST_EXTS, TARGET_SR
from pipeline.io.sources import read_policy_for, read_unit
from pipeline.io.storage import open_filesystem, with_retries
from pipeline.records import InputUnit, SourceItem
from pipeline.runtime.ray_setup import worker_storage_options
from pipeline.tokenize.fingerprint import job_fingerprint
from pipeline.tokenize.work_plan import plan_remaining

__all__ = ["DEFAULT_X_REAL_TIME", "THROUGHPUT_NOTE", "HeaderInfo", "PlanReport", "plan_job", "probe_header"]

# Audio seconds per wall second of ONE encoder replica, measured with bench/pipeline_throughput.py
# (full-size codec, token rate 50, float32) on the 2-core CPU development machine. GPU replicas are
# far faster: measure yours with the same bench and pass --x-real-time-per-encoder.
DEFAULT_X_REAL_TIME = 1.4
THROUGHPUT_NOTE = (
    "default: 1.4x real time per encoder = CPU figure (full-size codec, token rate 50, "
    "2-core CPU, bench/pipeline_throughput.py); on GPUs measure and pass "
    "--x-real-time-per-encoder"
)
# Output size model (an estimate: Parquet encoding and compression change it both ways).
TOKEN_STREAMS, BYTES_PER_TOKEN = 2, 2  # semantic + acoustic, uint16
ROW_OVERHEAD_BYTES = 64  # n_frames, duration_s, list offsets, per-row Parquet bookkeeping
ERROR_ROW_BYTES = 256  # stage, reason, detail, ids
WDS_MEMBER_BYTES = 2 * 512 + 128  # two tar headers + the .npy header per WebDataset sample
READ_THREADS = 8


@dataclass(frozen=True)
class HeaderInfo:
    """What a header says about one item: source rate and frames, or why it says nothing."""

    sample_rate: int = 0
    frames: int = 0
    reader: str = ""  # "soundfile" | "pyav" | "" (unreadable)
    problem: str = ""

    @property
    def known(self) -> bool:
        return self.sample_rate > 0 and not self.problem

    def samples_16k(self, resampler: str = "official") -> int:
        """Samples after resampling to 16 kHz, as the pipeline's resampler returns them: the
        official filter gives ceil(N·16000/rate), soxr rounds half up."""
        if self.sample_rate == TARGET_SR:
            return self.frames
        if resampler == "official":
            return -(-self.frames * TARGET_SR // self.sample_rate)
        return (2 * self.frames * TARGET_SR + self.sample_rate) // (2 * self.sample_rate)


def _probe_soundfile(data: bytes) -> HeaderInfo:
    import soundfile as sf

    info = sf.info(io.BytesIO(data))
    return HeaderInfo(int(info.samplerate), int(info.frames), "soundfile")


def _probe_pyav(data: bytes) -> HeaderInfo:
    """Stream duration (or frame count, or the container's duration) × rate; nothing is decoded."""
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        if rate <= 0:
            raise ValueError("unknown sample rate")
        seconds = None
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif stream.frames and stream.codec_context.frame_size:
            seconds = stream.frames * stream.codec_context.frame_size / rate
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        if seconds is None or seconds < 0:
            raise ValueError("no duration in the container")
        return HeaderInfo(rate, round(seconds * rate), "pyav")


def probe_header(data: bytes | None, name_hint: str = "") -> HeaderInfo:
    """Rate and frames from the header, trying readers in `decode_audio`'s order for this name."""
    if not data:
        return HeaderInfo(problem="empty object")
    readers = [_probe_soundfile, _probe_pyav]
    if os.path.splitext(name_hint)[1].lower() in _PYAV_FIRST_EXTS:  # as decode_audio picks
        readers.reverse()
    problems = []
    for reader in readers:
        try:
            info = reader(data)
        except Exception as error:  # noqa: BLE001 - any reader failure just means "try the next"
            problems.append(f"{reader.__name__[7:]}: {type(error).__name__}")
            continue
        if info.sample_rate > 0:
            return info
    return HeaderInfo(problem="; ".join(problems) or "no reader")


@dataclass
class _Tally:
    """Counts of one unit (or of all): merged on the driver."""

    items: int = 0
    decodable: int = 0
    unknown: int = 0
    empty: int = 0
    too_long: int = 0
    read_errors: dict[str, int] = field(default_factory=dict)
    source_seconds: float = 0.0
    seconds_16k: float = 0.0
    frames: int = 0
    token_bytes: int = 0
    error_bytes: int = 0
    wds_bytes: int = 0
    readers: dict[str, int] = field(default_factory=dict)

    def merge(self, other: _Tally) -> None:
        for name, value in other.__dict__.items():
            if isinstance(value, dict):
                mine = getattr(self, name)
                for key, count in value.items():
                    mine[key] = mine.get(key, 0) + count
            else:
                setattr(self, name, getattr(self, name) + value)


def _tally_item(tally: _Tally, item: SourceItem, config: TokenizeConfig) -> None:
    tally.items += 1
    if item.error is not None:  # the source already made it an error row (read stage)
        tally.read_errors[item.error.reason] = tally.read_errors.get(item.error.reason, 0) + 1
        tally.error_bytes += ERROR_ROW_BYTES
        return
    if not item.data:  # decode_audio: "empty_audio"
        tally.empty += 1
        tally.error_bytes += ERROR_ROW_BYTES
        return
    header = probe_header(item.data, item.source_uri)
    tally.readers[header.reader or "none"] = tally.readers.get(header.reader or "none", 0) + 1
    if not header.known:
        tally.unknown += 1
        tally.error_bytes += ERROR_ROW_BYTES
        return
    seconds = header.frames / header.sample_rate
    if header.frames <= 0:
        tally.empty += 1
        tally.error_bytes += ERROR_ROW_BYTES
        return
    if config.max_audio_seconds is not None and seconds > config.max_audio_seconds:
        tally.too_long += 1
        tally.error_bytes += ERROR_ROW_BYTES
        return
    samples = header.samples_16k(config.resampler)
    frames = num_tokens(samples, config.token_rate)
    tally.decodable += 1
    tally.source_seconds += seconds
    tally.seconds_16k += samples / TARGET_SR
    tally.frames += frames
    text = len(item.item_id) + len(item.source_uri) + len(json.dumps(item.metadata, ensure_ascii=False))
    tally.token_bytes += TOKEN_STREAMS * BYTES_PER_TOKEN * frames + ROW_OVERHEAD_BYTES + text
    if "webdataset" in config.formats:
        tally.wds_bytes += TOKEN_STREAMS * BYTES_PER_TOKEN * frames + WDS_MEMBER_BYTES + text


def _tally_unit(unit: InputUnit, config: TokenizeConfig, storage_options: Mapping[str, Any]) -> _Tally:
    tally = _Tally()
    for item in read_unit(
        unit,
        storage_options=storage_options,
        audio_column=config.audio_column,
        uri_column=config.uri_column,
        policy=read_policy_for(config),  # the run's: its size and time caps, links refused as it refuses
    ):
        _tally_item(tally, item, config)
    return tally


@dataclass
class PlanReport:
    """The size of the work left on an input (against an output, when given). Sizes are estimates."""

    input: str
    output: str | None
    version: str | None
    units_remaining: int
    units_committed: int = 0
    items_committed: int = 0
    audio_hours_committed: float = 0.0
    items: int = 0  # items of the remaining units
    items_decodable: int = 0  # header read, duration > 0 and within max_audio_seconds
    items_unknown_duration: int = 0  # no reader understood the header: most likely error rows
    items_empty: int = 0
    items_too_long: int = 0
    read_errors_by_reason: dict[str, int] = field(default_factory=dict)
    header_readers: dict[str, int] = field(default_factory=dict)
    source_audio_hours: float = 0.0  # frames / source rate of the decodable items
    audio_hours: float = 0.0  # after resampling to 16 kHz, as the run's duration_s adds up
    token_frames: int = 0
    output_bytes_estimate: int = 0
    x_real_time_per_encoder: float = DEFAULT_X_REAL_TIME
    throughput_note: str = THROUGHPUT_NOTE
    encoder_hours: float = 0.0
    encoders: int | None = None
    wall_hours_estimate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """A short human summary; every size is labelled an estimate."""
        lines = [f"plan {self.input}" + (f" -> {self.output}" if self.output else "")]
        if self.version:
            lines.append(
                f"  dataset version {self.version}: {self.units_committed} units already "
                f"committed ({self.items_committed} items, {self.audio_hours_committed:.3f} "
                "audio-h)"
            )
        lines.append(
            f"  to do: {self.units_remaining} units, {self.items} items "
            f"({self.items_decodable} with a readable duration, {self.items_unknown_duration} "
            f"unknown duration, {self.items_empty} empty, {self.items_too_long} too long, "
            f"{sum(self.read_errors_by_reason.values())} read errors)"
        )
        if self.read_errors_by_reason:
            lines.append(
                "  read errors: "
                + ", ".join(f"{k}: {v}" for k, v in sorted(self.read_errors_by_reason.items()))
            )
        lines.append(
            f"  audio: {self.audio_hours:.3f} h at 16 kHz ({self.source_audio_hours:.3f} h "
            "at source rates), from headers"
        )
        lines.append(
            f"  output (estimate): {self.token_frames} token frames, "
            f"~{_human_bytes(self.output_bytes_estimate)} uncompressed"
        )
        wall = (
            f", ~{self.wall_hours_estimate:.2f} h wall on {self.encoders} encoders"
            if self.wall_hours_estimate is not None
            else ""
        )
        lines.append(
            f"  encode (estimate): {self.encoder_hours:.2f} encoder-hours at "
            f"{self.x_real_time_per_encoder:g}x real time per encoder{wall}"
        )
        lines.append(f"  ({self.throughput_note})")
        return "\n".join(lines)


def _human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    return f"{size:.1f} PB"  # pragma: no cover


def plan_job(
    config: TokenizeConfig,
    *,
    version: str | None = None,
    x_real_time_per_encoder: float = DEFAULT_X_REAL_TIME,
    encoders: int | None = None,
    threads: int = READ_THREADS,
) -> PlanReport:
    """Measure the work `run_tokenize(config)` would do now (skipping what `config.output` holds).

    `version` names the output's dataset version directly; without it the version comes from the
    codec config (as the run computes it, which may read the weights to digest them).
    """
    if not config.input:
        raise ConfigError("plan needs INPUT (or `input` in --config)")
    if x_real_time_per_encoder <= 0:
        raise ConfigError(f"x_real_time_per_encoder={x_real_time_per_encoder!r}: must be > 0")
    fs = layout = None
    if config.output:
        fs, _ = open_filesystem(config.output, config.storage_options)
        layout = (
            OutputLayout(config.output, version)
            if version
            else OutputLayout.for_fingerprint(config.output, job_fingerprint(config))
        )
    work = plan_remaining(config, fs, layout)
    report = PlanReport(
        input=config.input,
        output=config.output or None,
        version=layout.version if layout else None,
        units_remaining=len(work.units),
        x_real_time_per_encoder=x_real_time_per_encoder,
        encoders=encoders,
    )
    entries = work.manifest.values()
    report.units_committed = len(work.manifest)
    report.items_committed = sum(int(e.get("n_items") or 0) for e in entries)
    report.audio_hours_committed = sum(float(e.get("audio_seconds") or 0) for e in entries) / 3600

    options = worker_storage_options(config.input, config.storage_options)

    def tally(unit: InputUnit) -> _Tally:
        return with_retries(lambda: _tally_unit(unit, config, options))

    total = _Tally()
    if work.units:
        # The first unit on this thread: it fills the readers' per-process caches (a manifest's
        # parse) that later units share, so the threads only ever read them.
        total.merge(tally(work.units[0]))
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(work.units)))) as pool:
            for result in pool.map(tally, work.units[1:]):
                total.merge(result)
    report.items = total.items
    report.items_decodable = total.decodable
    report.items_unknown_duration = total.unknown
    report.items_empty = total.empty
    report.items_too_long = total.too_long
    report.read_errors_by_reason = dict(sorted(total.read_errors.items()))
    report.header_readers = dict(sorted(total.readers.items()))
    report.source_audio_hours = total.source_seconds / 3600
    report.audio_hours = total.seconds_16k / 3600
    report.token_frames = total.frames
    report.output_bytes_estimate = total.token_bytes + total.error_bytes + total.wds_bytes
    report.encoder_hours = report.audio_hours / x_real_time_per_encoder
    if encoders:
        report.wall_hours_estimate = report.encoder_hours / encoders
    return report
