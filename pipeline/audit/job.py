"""`semtok audit`: listen to a sample of a tokenized output and say how good its tokens are.

Plan (driver): read every committed token file once — token statistics for the whole output and
the list of candidates (id, unit, source, domain) — then pick a seeded, stratified sample
(`audit_sampling`). Execute (Ray Data): re-read the sampled originals (CPU), decode their tokens
on a pool of full codec replicas (GPU when there is one), score each pair (CPU). Report (driver):
every number into audit.json, and a static HTML page with plots, players and spectrograms
(`audit_report`). The audit writes only below `<version>/audits/<id>/` (or `report`): the tokens
are never touched.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import importlib.util
import io
import json
import math
import sys
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field

from codec import CodecSpec, build_segmenter, check_decode_options
from pipeline.audit.quality_metrics import DEFAULT_METRICS, DOMAINS, METRICS, SAMPLE_RATE, goodness
from pipeline.audit.reference_figures import load_reference_figures
from pipeline.audit.sampling import (
    Candidate,
    decode_seed,
    domain_of,
    random_pick,
    sample_items,
    sample_size,
    source_of,
)
from pipeline.audit.stage import AuditItem, DecodeActor, ReadOriginals, score_batch
from pipeline.audit.token_stats import TokenStats, read_token_stats
from pipeline.config import (
    ConfigError,
    Device,
    Domain,
    DType,
    PositiveFloat,
    PositiveInt,
    TokenizeConfig,
    validated_dataclass,
)
from pipeline.dataset.layout import OutputLayout
from pipeline.dataset.manifest import read_manifest
from pipeline.dataset.parquet_writer import ERRORS_SCHEMA
from pipeline.dataset.run_records import latest_tokenize_record, utc_now_iso
from pipeline.dataset.versions import dataset_versions
from pipeline.io.sources import read_policy_for
from pipeline.io.storage import open_filesystem, with_retries
from pipeline.runtime.ray_setup import init_ray, worker_storage_options
from pipeline.tokenize.fingerprint import job_fingerprint

if TYPE_CHECKING:  # the report draws with matplotlib (the audit extra): imported where it is written
    from pipeline.audit.report import ExampleAudio

DEFAULT_SAMPLE = 20
READ_THREADS = 16
SCAN_UNITS_PER_TASK = 64
READ_CPUS = 0.5  # per task re-reading originals  # units whose token files one scan task reads


@validated_dataclass
class AuditConfig:
    """Everything an audit run needs; keyword-only, validated on creation (one-line ConfigError)."""

    output: str
    version: str | None = None
    sample: PositiveInt | None = None  # items; DEFAULT_SAMPLE when neither sample nor fraction is given
    fraction: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int = 0
    # decoding
    steps: PositiveInt = 50  # DDIM steps (the official decode's default)
    guidance: float = 2.0  # classifier-free guidance scale (the official default)
    # decode and score at most this much of each item (from its start)
    max_item_seconds: PositiveFloat = 10.24
    decode_dtype: DType = "float32"
    weights: str | None = None  # where this cluster reads the weights (default: as recorded)
    # scoring and report
    default_domain: Domain = "sound"  # domain of items whose metadata names none
    metrics: tuple[str, ...] = DEFAULT_METRICS
    rank_metric: str = "visqol"  # orders the worst-k examples
    worst_k: Annotated[int, Field(ge=0)] = 5
    random_k: Annotated[int, Field(ge=0)] = 5
    report: str | None = None  # report folder URL (default: <version>/audits/<audit id>)
    references: str | None = None  # JSON of published figures to draw as reference lines
    # execution
    ray_address: str | None = None
    device: Device = "auto"
    num_decoders: PositiveInt | None = None
    gpus_per_decoder: PositiveFloat = 1.0
    cpus_per_decoder: PositiveFloat | None = None
    decode_batch_items: PositiveInt = 4
    score_cpus: PositiveFloat = 1.0
    storage_options: dict[str, Any] = field(default_factory=dict)  # output storage
    input_storage_options: dict[str, Any] | None = None  # originals (default: storage_options)

    def __post_init__(self) -> None:
        if self.sample is None and self.fraction is None:
            self.sample = DEFAULT_SAMPLE

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: {why}")

        if self.sample is not None and self.fraction is not None:
            raise bad("fraction", "give sample or fraction, not both")
        if self.default_domain not in DOMAINS:
            raise bad("default_domain", f"must be one of {DOMAINS}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise bad("metrics", f"must be a non-empty subset of {sorted(METRICS)}")
        if self.rank_metric not in self.metrics:
            raise bad("rank_metric", "must be one of the metrics computed")

    def to_dict(self) -> dict[str, Any]:
        from pipeline.io.storage import redact_options

        data = dataclasses.asdict(self)
        data["metrics"] = list(self.metrics)
        data["storage_options"] = redact_options(self.storage_options)
        data["input_storage_options"] = redact_options(self.input_storage_options or {})
        return data


@dataclass
class AuditResult:
    audit_id: str
    report_url: str  # the folder
    html_url: str
    json_url: str
    sampled: int
    scored: int
    failed: int
    wall_seconds: float
    random_weights: bool


@dataclass
class _Decoders:
    device: str
    count: int
    cpus: float
    gpus: float


def plan_decoders(config: AuditConfig, cluster: Mapping[str, float]) -> _Decoders:
    """One replica per GPU (or per `gpus_per_decoder`); on CPUs one replica that leaves a CPU for
    reading and scoring. A request the cluster cannot hold is an error, not a hang."""
    gpus, cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    device = config.device if config.device != "auto" else ("cuda" if gpus > 0 else "cpu")
    if device == "cuda":
        if gpus < config.gpus_per_decoder:
            raise ConfigError(f"device=cuda but the cluster has {gpus:g} GPU(s)")
        count = config.num_decoders or max(1, int(gpus // config.gpus_per_decoder))
        return _Decoders("cuda", count, config.cpus_per_decoder or 1.0, config.gpus_per_decoder)
    count = config.num_decoders or 1
    per = config.cpus_per_decoder or max(1.0, math.floor((cpus - config.score_cpus) / count))
    if count * per + READ_CPUS > cpus:  # the readers feeding the decoders would never get a CPU
        raise ConfigError(
            f"{count} decoder(s) × {per:g} CPU leave less than {READ_CPUS} of the cluster's "
            f"{cpus:g} CPU(s) for reading originals: lower cpus_per_decoder or num_decoders"
        )
    return _Decoders("cpu", count, per, 0.0)


def _choose_version(fs, root_path: str, output: str, version: str | None) -> OutputLayout:
    versions = dataset_versions(fs, root_path, version)
    if not versions:
        raise FileNotFoundError(f"no dataset version under {output}")
    if len(versions) > 1:
        raise ConfigError(
            f"{output} holds several dataset versions ({', '.join(versions)}): pick one with --version"
        )
    return OutputLayout(output.rstrip("/"), versions[0])


@dataclass
class _Scan:
    """What one pass over the committed files gives: candidates, statistics, error counts."""

    candidates: list[Candidate]
    token_stats: TokenStats
    errors_by_source: dict[str, dict[str, int]]
    items_by_source: dict[str, int]
    token_files: dict[str, str]  # unit id → tokens file (relative)

    def merge(self, other: _Scan) -> _Scan:
        self.candidates += other.candidates
        self.token_stats.merge(other.token_stats)
        for source, reasons in other.errors_by_source.items():
            mine = self.errors_by_source.setdefault(source, {})
            for reason, count in reasons.items():
                mine[reason] = mine.get(reason, 0) + count
        for source, count in other.items_by_source.items():
            self.items_by_source[source] = self.items_by_source.get(source, 0) + count
        self.token_files.update(other.token_files)
        return self


def _scan_units(
    output: str,
    storage_options: Mapping[str, Any],
    version: str,
    entries: Mapping[str, dict[str, Any]],
    vocab_sizes: tuple[int, ...],
    default_domain: str,
) -> _Scan:
    """Read the token and error files of some units (in threads); keep only counts and candidates."""
    fs, _ = open_filesystem(output, storage_options)
    layout = OutputLayout(output.rstrip("/"), version)

    def read(unit_id: str) -> tuple[str, pa.Table | None, pa.Table | None]:
        tables: dict[str, pa.Table] = {}
        for info in entries[unit_id].get("files", []):
            if info["kind"] in ("tokens", "errors"):
                data = with_retries(functools.partial(fs.cat_file, layout.path(info["path"])))
                tables[info["kind"]] = pq.read_table(io.BytesIO(data))
        return unit_id, tables.get("tokens"), tables.get("errors")

    scan = _Scan([], TokenStats(vocab_sizes), {}, {}, {})
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        for unit_id, tokens, error_table in pool.map(read, sorted(entries)):
            kind = str((entries[unit_id].get("unit_info") or {}).get("kind", "files"))
            if tokens is not None and tokens.num_rows:
                scan.token_files[unit_id] = next(
                    f["path"] for f in entries[unit_id]["files"] if f["kind"] == "tokens"
                )
                ids = tokens.column("id").to_pylist()
                metas = [json.loads(m or "{}") for m in tokens.column("metadata").to_pylist()]
                sources = [source_of(i, kind, m) for i, m in zip(ids, metas, strict=True)]
                for item_id, meta, source, duration, uri in zip(
                    ids,
                    metas,
                    sources,
                    tokens.column("duration_s").to_pylist(),
                    tokens.column("source_uri").to_pylist(),
                    strict=True,
                ):
                    domain = domain_of(meta, default_domain)
                    scan.candidates.append(
                        Candidate(item_id, unit_id, source, domain, float(duration), str(uri))
                    )
                    scan.items_by_source[source] = scan.items_by_source.get(source, 0) + 1
                read_token_stats(
                    tokens.append_column("source", pa.array(sources, pa.string())),
                    vocab_sizes,
                    group_column="source",
                    stats=scan.token_stats,
                )
            if error_table is not None and error_table.num_rows:
                error_table = error_table.select(ERRORS_SCHEMA.names)
                for item_id, reason in zip(
                    error_table.column("id").to_pylist(),
                    error_table.column("reason").to_pylist(),
                    strict=True,
                ):
                    by_reason = scan.errors_by_source.setdefault(source_of(item_id, kind, {}), {})
                    by_reason[reason] = by_reason.get(reason, 0) + 1
    return scan


def _scan_output(
    output: str,
    storage_options: Mapping[str, Any],
    layout: OutputLayout,
    manifest: Mapping[str, dict[str, Any]],
    vocab_sizes: tuple[int, ...],
    default_domain: str,
) -> _Scan:
    """One pass over every committed unit: on the driver for small outputs, else as Ray tasks of
    SCAN_UNITS_PER_TASK units each (the driver only merges counts and candidate lists)."""
    unit_ids = sorted(manifest)
    chunks = [
        {u: manifest[u] for u in unit_ids[i : i + SCAN_UNITS_PER_TASK]}
        for i in range(0, len(unit_ids), SCAN_UNITS_PER_TASK)
    ]
    args = (output, dict(storage_options), layout.version)
    if len(chunks) <= 1:
        return _scan_units(*args, chunks[0] if chunks else {}, vocab_sizes, default_domain)
    import ray

    scan_task = ray.remote(num_cpus=0.5, max_retries=3)(_scan_units)
    pending = [scan_task.remote(*args, chunk, vocab_sizes, default_domain) for chunk in chunks]
    total = _Scan([], TokenStats(vocab_sizes), {}, {}, {})
    for part in ray.get(pending):
        total.merge(part)
    return total


def _sampled_tokens(
    fs, layout: OutputLayout, token_files: Mapping[str, str], chosen: list[Candidate]
) -> dict[str, np.ndarray]:
    """id → uint16 [T, 2] for the chosen items. Their units' token files are read a second time:
    the scan keeps no tokens, so its memory does not grow with the output."""
    wanted: dict[str, set[str]] = {}
    for candidate in chosen:
        wanted.setdefault(candidate.unit_id, set()).add(candidate.item_id)

    def read(unit_id: str) -> dict[str, np.ndarray]:
        data = with_retries(lambda: fs.cat_file(layout.path(token_files[unit_id])))
        table = pq.read_table(io.BytesIO(data), columns=["id", "semantic_tokens", "acoustic_tokens"])
        out = {}
        for row in table.to_pylist():
            if row["id"] in wanted[unit_id]:
                out[row["id"]] = np.stack(
                    [
                        np.asarray(row["semantic_tokens"], dtype=np.uint16),
                        np.asarray(row["acoustic_tokens"], dtype=np.uint16),
                    ],
                    axis=1,
                )
        return out

    tokens: dict[str, np.ndarray] = {}
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        for part in pool.map(read, sorted(wanted)):
            tokens.update(part)
    return tokens


class _Examples:
    """Keeps the audio of the examples the report plays: fixed random picks, and a running
    worst-k by the rank metric (so the driver never holds every item's audio)."""

    def __init__(self, random_ids: list[str], worst_k: int, rank_metric: str) -> None:
        self.random_order = list(random_ids)
        self.random_ids = set(random_ids)
        self.worst_k = worst_k
        self.rank_metric = rank_metric
        self.kept: dict[str, ExampleAudio] = {}
        self._heap: list[tuple[float, str]] = []  # (-badness, id): the best of the worst on top

    def offer(self, item_id: str, value: float | None, audio: ExampleAudio) -> None:
        if item_id in self.random_ids:
            self.kept[item_id] = audio
        if value is None or self.worst_k == 0:
            return
        badness = -goodness(self.rank_metric, value)
        entry = (badness, item_id)
        if len(self._heap) < self.worst_k:
            heapq.heappush(self._heap, entry)
            self.kept[item_id] = audio
        elif entry > self._heap[0]:
            _, dropped = heapq.heapreplace(self._heap, entry)
            self.kept[item_id] = audio
            if dropped not in self.random_ids:
                self.kept.pop(dropped, None)

    def worst_ids(self) -> list[str]:
        return [item_id for _, item_id in sorted(self._heap, reverse=True)]

    def shown_random_ids(self) -> list[str]:
        """The random picks that were scored (an item that failed has no audio to play)."""
        return [item_id for item_id in self.random_order if item_id in self.kept]


def _require_audit_extra() -> None:
    """A one-line error before any work when the report's libraries are missing (the CLI and
    `AuditConfig` need none of them, so `pip install -e .` runs tokenize)."""
    missing = [name for name in ("matplotlib", "scipy") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f'the audit needs {", ".join(missing)}, which is not installed: pip install -e ".[audit]"'
        )


def run_audit(config: AuditConfig, *, stream: TextIO = sys.stderr) -> AuditResult:
    """Sample, decode, score and report one dataset version of `config.output`."""
    _require_audit_extra()
    started = time.monotonic()
    started_at = utc_now_iso()
    fs, root_path = open_filesystem(config.output, config.storage_options)
    layout = _choose_version(fs, root_path, config.output, config.version)
    record = with_retries(lambda: latest_tokenize_record(fs, layout))
    input_options = dict(
        config.input_storage_options if config.input_storage_options is not None else config.storage_options
    )
    tokenize_config = TokenizeConfig.from_dict(
        {
            **record["config"],
            "storage_options": input_options,
            **({"weights": config.weights} if config.weights else {}),
        }
    )
    fingerprint = job_fingerprint(tokenize_config)
    if OutputLayout.for_fingerprint(layout.root_url, fingerprint).version != layout.version:
        raise ConfigError(
            f"the codec the audit would load does not make {layout.version}: its "
            "tokens would be decoded with other weights"
        )
    random_weights = bool(fingerprint.get("random_weights"))
    vocab_sizes = (int(fingerprint["semantic_vocab_size"]), int(fingerprint.get("acoustic_vocab_size", 8192)))
    spec = tokenize_config.codec_spec()
    try:
        check_decode_options(
            spec, {"steps": config.steps, "guidance": config.guidance, "dtype": config.decode_dtype}
        )
    except ValueError as error:
        raise ConfigError(f"decode options: {error}") from None

    manifest = with_retries(lambda: read_manifest(fs, layout))
    init_ray(config.ray_address)
    scan = _scan_output(
        config.output,
        worker_storage_options(config.output, config.storage_options),
        layout,
        manifest,
        vocab_sizes,
        config.default_domain,
    )
    n = sample_size(len(scan.candidates), sample=config.sample, fraction=config.fraction)
    chosen = sample_items(scan.candidates, n, seed=config.seed)
    audit_id = (
        time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        + f"-n{len(chosen)}-seed{config.seed}-"
        + uuid.uuid4().hex[:6]
    )
    report_url = config.report or layout.audit_dir(audit_id)
    print(
        f"[semtok] audit {layout.version_url}: {len(chosen)} of {len(scan.candidates)} items "
        f"({len({c.source for c in chosen})} source(s)), {config.steps} DDIM steps",
        file=stream,
        flush=True,
    )
    if random_weights:
        print(
            "[semtok] WARNING: RANDOM codec weights: the audit's numbers are meaningless",
            file=stream,
            flush=True,
        )

    rows, examples, timing = _execute(
        config, spec, tokenize_config, fs, layout, manifest, scan, chosen, stream
    )
    wall = time.monotonic() - started
    from pipeline.audit.report import AuditMedia, write_report

    media = AuditMedia(
        examples=examples.kept, worst_ids=examples.worst_ids(), random_ids=examples.shown_random_ids()
    )
    document = {
        "format": "semtok-audit/1",
        "audit_id": audit_id,
        "started_at": started_at,
        "finished_at": utc_now_iso(),
        "dataset_version": layout.version,
        "output": layout.version_url,
        "random_weights": random_weights,
        "fingerprint": fingerprint,
        "tokenize_config": {k: v for k, v in tokenize_config.to_dict().items() if k != "storage_options"},
        "config": config.to_dict(),
        "population": {
            "items": len(scan.candidates),
            "items_by_source": scan.items_by_source,
            "errors_by_source": scan.errors_by_source,
        },
        "items": rows,
        "token_stats": scan.token_stats.summary(include_histograms=False),
        "token_histograms": {
            name: scan.token_stats.histogram(name).tolist() for name in scan.token_stats.codebooks
        },
        "token_histograms_by_source": _source_histograms(scan.token_stats),
        "references": [r.to_dict() for r in load_reference_figures(config.references, fingerprint)],
        "timing": {"wall_seconds": wall, **timing},
    }
    html_url, json_url = write_report(report_url, document, media, storage_options=config.storage_options)
    failed = sum(1 for r in rows if r["error"])
    print(
        f"[semtok] audit done: {len(rows) - failed} scored, {failed} could not be audited, "
        f"wall {wall:.1f} s; report {html_url}",
        file=stream,
        flush=True,
    )
    return AuditResult(
        audit_id, report_url, html_url, json_url, len(rows), len(rows) - failed, failed, wall, random_weights
    )


def _source_histograms(stats: TokenStats, limit: int = 12) -> dict[str, dict[str, list[int]]]:
    """Per-source histograms for the usage plots (the largest `limit` sources: a plot of hundreds
    of curves says nothing; every source's figures are in token_stats)."""
    summary = stats.summary()["groups"]
    largest = sorted(stats.groups, key=lambda g: -summary[str(g)]["n_frames"])[:limit]
    return {str(g): {name: stats.histogram(name, g).tolist() for name in stats.codebooks} for g in largest}


def _execute(
    config: AuditConfig,
    spec: CodecSpec,
    tokenize_config: TokenizeConfig,
    fs,
    layout: OutputLayout,
    manifest: Mapping[str, dict[str, Any]],
    scan: _Scan,
    chosen: list[Candidate],
    stream: TextIO,
) -> tuple[list[dict[str, Any]], _Examples, dict[str, Any]]:
    import ray

    from pipeline.audit.report import ExampleAudio

    rows: list[dict[str, Any]] = []
    random_ids = random_pick([c.item_id for c in chosen], config.random_k, seed=config.seed)
    examples = _Examples(random_ids, config.worst_k, config.rank_metric)
    timing: dict[str, Any] = {
        "decode_seconds_total": 0.0,
        "score_seconds_total": 0.0,
        "decoded_audio_seconds": 0.0,
    }
    if not chosen:
        return rows, examples, timing
    tokens = _sampled_tokens(fs, layout, scan.token_files, chosen)
    max_samples = int(round(config.max_item_seconds * SAMPLE_RATE))
    segmenter = build_segmenter(spec)
    max_frames = segmenter(torch.zeros(max_samples)).num_tokens
    by_unit: dict[str, list[AuditItem]] = {}
    for candidate in chosen:
        by_unit.setdefault(candidate.unit_id, []).append(
            AuditItem(
                candidate.item_id,
                candidate.source,
                candidate.domain,
                decode_seed(config.seed, candidate.item_id),
                tokens[candidate.item_id][:max_frames],
                candidate.duration_s,
            )
        )

    decoders = plan_decoders(config, ray.cluster_resources())
    print(f"[semtok] decoding on {decoders.count} {decoders.device} replica(s)", file=stream, flush=True)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = False
    context.enable_progress_bars = False
    unit_rows = [
        {
            "unit": json.dumps(_readable_unit(manifest[u], u, chosen)),
            "items": json.dumps([item.to_json() for item in items]),
        }
        for u, items in by_unit.items()
    ]
    dataset: ray.data.Dataset = ray.data.from_items(unit_rows, override_num_blocks=len(unit_rows))
    dataset = dataset.flat_map(
        ReadOriginals(
            max_samples=max_samples,
            channel_policy=tokenize_config.channel_policy,
            max_audio_seconds=tokenize_config.max_audio_seconds,
            storage_options=worker_storage_options(tokenize_config.input, tokenize_config.storage_options),
            audio_column=tokenize_config.audio_column,
            uri_column=tokenize_config.uri_column,
            decode_options={
                "resampler": tokenize_config.resampler,
                "max_decoded_bytes": tokenize_config.max_decoded_bytes,
            },
            read_policy=read_policy_for(tokenize_config),
            item_timeout_s=tokenize_config.item_timeout_s,
            max_decode_memory_bytes=tokenize_config.max_decode_memory_bytes,
            spool_min_bytes=tokenize_config.spool_min_bytes,
            stream_min_seconds=tokenize_config.stream_min_seconds,
            max_spill_bytes=tokenize_config.max_spill_bytes,
            spill_dir=tokenize_config.spill_dir,
        ),
        num_cpus=READ_CPUS,
    )
    dataset = dataset.map_batches(
        DecodeActor,
        fn_constructor_kwargs={
            "spec": spec,
            "device": decoders.device,
            "threads": math.ceil(decoders.cpus) if decoders.device == "cpu" else None,
            "steps": config.steps,
            "guidance": config.guidance,
            "dtype": config.decode_dtype,
        },
        batch_size=config.decode_batch_items,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=decoders.count),
        num_cpus=decoders.cpus,
        num_gpus=decoders.gpus,
    )
    dataset = dataset.map_batches(
        score_batch,
        fn_kwargs={"metrics": config.metrics},
        batch_size=1,
        batch_format="numpy",
        num_cpus=config.score_cpus,
    )
    last = time.monotonic()
    for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
        for i in range(len(batch["item_id"])):
            row = {name: batch[name][i] for name in batch}
            record = _item_record(row)
            rows.append(record)
            timing["decode_seconds_total"] += record["decode_seconds"]
            timing["score_seconds_total"] += record["score_seconds"]
            if not record["error"]:
                timing["decoded_audio_seconds"] += record["audited_seconds"]
                value = record["scores"].get(config.rank_metric)
                examples.offer(
                    record["id"],
                    value,
                    ExampleAudio(
                        np.frombuffer(row["reference"], dtype=np.float32).copy(),
                        np.frombuffer(row["reconstruction"], dtype=np.float32).copy(),
                    ),
                )
        if time.monotonic() - last > 10:
            last = time.monotonic()
            print(f"[semtok] audit: {len(rows)}/{len(chosen)} items", file=stream, flush=True)
    accounted = {r["id"] for r in rows}
    missing = [c.item_id for c in chosen if c.item_id not in accounted]
    if missing or len(rows) != len(chosen):
        raise RuntimeError(
            f"audit lost or duplicated items: {len(rows)} rows for {len(chosen)} sampled, "
            f"missing {missing[:3]}"
        )
    rows.sort(key=lambda r: (r["source"], r["id"]))
    scored = [r for r in rows if not r["error"]]
    timing["decode_seconds_per_item"] = (timing["decode_seconds_total"] / len(scored)) if scored else None
    audio_seconds = timing["decoded_audio_seconds"]
    timing["decode_seconds_per_audio_second"] = (
        timing["decode_seconds_total"] / audio_seconds if audio_seconds else None
    )
    timing["decoders"] = dataclasses.asdict(decoders)
    return rows, examples, timing


def _readable_unit(entry: Mapping[str, Any], unit_id: str, chosen: list[Candidate]) -> dict[str, Any]:
    """The unit as committed; for a `files` unit only the sampled files (one file per item), so the
    audit does not read hundreds of files to find two."""
    unit = {**entry["unit_info"], "unit_id": unit_id}
    if unit.get("kind") == "files":
        wanted = {c.source_uri for c in chosen if c.unit_id == unit_id}
        unit["uris"] = [uri for uri in unit.get("uris", []) if uri in wanted]
    return unit


def _item_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """One audited item as JSON: scores, not-applicable reasons or the reason it failed."""
    scores = json.loads(row["scores"]) if row["scores"] else {"scores": {}, "not_applicable": {}}
    reference = len(row["reference"]) // 4
    return {
        "id": str(row["item_id"]),
        "unit_id": str(row["unit_id"]),
        "source": str(row["source"]),
        "domain": str(row["domain"]),
        "duration_s": float(row["duration_s"]),
        "audited_seconds": reference / SAMPLE_RATE,
        "n_frames": int(row["n_frames"]),
        "decode_seed": int(row["decode_seed"]),
        "decode_seconds": float(row["decode_seconds"]),
        "score_seconds": float(row["score_seconds"]),
        "scores": {k: v for k, v in scores["scores"].items() if v is not None},
        "not_applicable": scores["not_applicable"],
        "error": (
            {"stage": str(row["stage"]), "reason": str(row["reason"]), "detail": str(row["detail"])}
            if row["stage"]
            else None
        ),
    }


def audit_after_tokenize(config: TokenizeConfig, *, stream: TextIO = sys.stderr) -> None:
    """`semtok tokenize --audit-sample N`: audit the version that tokenize run just wrote, on the same Ray."""
    layout = OutputLayout.for_fingerprint(config.output, job_fingerprint(config))
    options: dict[str, Any] = {"steps": config.audit_steps} if config.audit_steps is not None else {}
    if config.audit_domain is not None:
        options["default_domain"] = config.audit_domain
    run_audit(
        AuditConfig(
            output=config.output,
            version=layout.version,
            sample=config.audit_sample,
            fraction=config.audit_fraction,
            seed=config.audit_seed,
            ray_address=config.ray_address,
            device=config.device,
            storage_options=dict(config.storage_options),
            **options,
        ),
        stream=stream,
    )
