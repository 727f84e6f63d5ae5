"""The `semtok` command line: parses arguments into a config and calls the pipeline.

Every user error (a bad flag, config value, URL, input or weights) is one line on stderr and exit
status 2, before any cluster starts; storage failures one line and 1; SIGINT/SIGTERM one line and
130/143. Other failures print one line (the traceback with -v) and exit 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from pipeline.config import (
    ConfigError,
    TokenizeConfig,
    is_text_field,
    read_config_file,
    unknown_field_message,
)
from pipeline.runtime.interrupt import Interrupted, install_handlers

PROG = "semtok"
_COMMON_SCHEMES = ("file", "s3", "gs", "gcs", "az", "abfs", "http", "https", "hf", "memory")


class UsageError(Exception):
    """A command-line mistake argparse found (unknown flag, bad choice, bad number)."""


class CliError(Exception):
    """A user error found before the job starts; the message is printed after `semtok: `."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (`semtok: error: ...`, no usage block) and exit 2."""

    def error(self, message: str) -> Any:
        raise UsageError(message)


def _choices(name: str) -> tuple[Any, ...]:
    """Allowed values of a TokenizeConfig field, from its type (the CLI copies no lists)."""
    return TokenizeConfig.choices(name)


def _audit_choices(name: str) -> tuple[Any, ...]:
    from pipeline.audit.job import AuditConfig
    from pipeline.config import field_choices

    return field_choices(AuditConfig, name)


def _job_flags(p: argparse.ArgumentParser) -> None:
    """Input and codec flags that name the job's work and its dataset version (tokenize and plan)."""
    p.add_argument("input", nargs="?", help="input URL (or set `input` in --config)")
    p.add_argument("--config", help="YAML file of TokenizeConfig fields; flags override it")
    p.add_argument("--input-kind", choices=_choices("input_kind"))
    p.add_argument("--glob", help="glob below INPUT, e.g. '**/*.flac'")
    p.add_argument("--files-per-unit", type=int)
    p.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=_choices("formats"),
        help="output format (repeatable; default parquet)",
    )
    p.add_argument("--weights", help="codec weights: folder, fsspec URL, 'hub' or 'random:SEED'")
    p.add_argument("--token-rate", type=int, choices=_choices("token_rate"))
    p.add_argument("--semantic-vocab-size", type=int, choices=_choices("semantic_vocab_size"))
    p.add_argument("--codec-size", choices=_choices("codec_size"), help="'tiny': small test architecture")
    p.add_argument("--dtype", choices=_choices("dtype"))
    p.add_argument("--channel-policy", choices=_choices("channel_policy"))
    p.add_argument(
        "--resampler",
        choices=_choices("resampler"),
        help="resampler to 16 kHz (default official: the official reader's)",
    )
    p.add_argument(
        "--encode-batching",
        choices=_choices("encode_batching"),
        help="default official: the official tokens bit for bit in any batch; batched: the whole "
        "batch through every op (faster where that rounding cannot be batched; tokens may differ)",
    )


def _tokenize_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenize",
        help="tokenize an audio corpus into SemantiCodec tokens",
        argument_default=argparse.SUPPRESS,
        description="Tokenize INPUT (folder, prefix, glob, tar shards, Parquet, or a "
        "JSONL/CSV manifest; local, s3://, gs://) into OUTPUT.",
    )
    _job_flags(p)
    p.add_argument("--out", "--output", dest="output", help="output URL")
    p.add_argument("--device", choices=_choices("device"))
    p.add_argument("--num-encoders", type=int)
    p.add_argument("--gpus-per-encoder", type=float)
    p.add_argument("--cpus-per-encoder", type=float)
    p.add_argument("--encode-batch-segments", type=int)
    p.add_argument("--max-error-fraction", type=float)
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        metavar="FIELD=VALUE",
        help="any TokenizeConfig field (YAML value), e.g. --set read_cpus=1",
    )
    p.add_argument(
        "--address", dest="ray_address", help="Ray cluster address (default: RAY_ADDRESS or a new local Ray)"
    )
    audit = p.add_mutually_exclusive_group()
    audit.add_argument(
        "--audit-sample",
        type=int,
        metavar="N",
        help="after the run, audit N sampled items (see `semtok audit`)",
    )
    audit.add_argument("--audit-fraction", type=float, metavar="F", help="after the run, audit a fraction")
    p.add_argument("--audit-seed", type=int)
    p.add_argument("--audit-steps", type=int, help="DDIM steps of the audit's decoder (default 50)")
    p.add_argument(
        "--audit-domain",
        choices=_choices("audit_domain"),
        help="domain of items whose metadata names none (default sound)",
    )


def _audit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="decode a sample of an output, score it, write an HTML report",
        argument_default=argparse.SUPPRESS,
        description="Sample tokenized items of OUTPUT (seeded, stratified by source and "
        "shard), decode them on a pool of codec replicas, score each against "
        "its original, and write index.html + audit.json (default: under "
        "<version>/audits/).",
    )
    p.add_argument("output", help="output root URL (the folder holding dataset versions)")
    p.add_argument("--version", help="dataset version (needed when OUTPUT holds several)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--sample", type=int, metavar="N", help="items to audit (default 20)")
    size.add_argument("--fraction", type=float, metavar="F", help="fraction of the items to audit")
    p.add_argument(
        "--seed",
        type=int,
        help="sampling and decoding seed (default 0): a rerun audits the same items with the same noise",
    )
    p.add_argument("--steps", type=int, help="DDIM steps (default 50, the official decode's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 2.0)")
    p.add_argument(
        "--max-item-seconds",
        type=float,
        help="audit the first S seconds of each item (default 10.24: one decoder window)",
    )
    p.add_argument(
        "--domain",
        dest="default_domain",
        choices=_audit_choices("default_domain"),
        help="domain of items whose metadata has no `domain` (default sound)",
    )
    p.add_argument("--weights", help="where this cluster reads the codec weights (default: as recorded)")
    p.add_argument("--report", help="report folder URL (default: <version>/audits/<audit id>)")
    p.add_argument("--references", help="JSON list of published figures to draw, each with its source")
    p.add_argument("--worst-k", type=int)
    p.add_argument("--random-k", type=int)
    p.add_argument("--num-decoders", type=int)
    p.add_argument("--device", choices=_audit_choices("device"))
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        metavar="FIELD=VALUE",
        help="any AuditConfig field (YAML value), e.g. --set decode_batch_items=8",
    )
    p.add_argument("--address", dest="ray_address", help="Ray cluster address")


def _audit_diff_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit-diff",
        help="compare two audits: metric shifts and regressions",
        description="Compare audit A with audit B (folders or audit.json URLs): mean of "
        "each metric overall, per domain and per source, paired over shared "
        "items, with 95 %% intervals.",
    )
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--out", help="also write an HTML comparison (index.html, diff.json, plots) here")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit status 1 when any metric regressed beyond its 95 %% interval",
    )


def _verify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check a committed output: missing, duplicate, orphaned, bad files",
        description="Check every dataset version under OUTPUT (or --version): items "
        "planned but not committed (with --input), duplicate item ids, "
        "orphaned data files, files that do not match the manifest. "
        "Exit status 1 when anything is wrong.",
    )
    p.add_argument("output", help="output root URL (the folder holding dataset versions)")
    p.add_argument("--input", help="input URL to plan against (settings from the latest run record)")
    p.add_argument("--version", help="check only this dataset version")
    p.add_argument("--input-kind", choices=_choices("input_kind"))
    p.add_argument("--files-per-unit", type=int)
    p.add_argument("--glob")
    p.add_argument(
        "--deep",
        action="store_true",
        help="read every data file whole: sha256 and ids (default: names, sizes and row counts "
        "against the manifest; Parquet footers only where the manifest cannot name the items)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _retry_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retry-failed",
        help="reprocess only the items in the errors table",
        description="Read, decode and encode again the items in OUTPUT's errors "
        "table (e.g. after a fix); successes move into the tokens, the "
        "rest stay in errors with their latest reason.",
    )
    p.add_argument("output", help="output root URL")
    p.add_argument("--version", help="retry only this dataset version")
    p.add_argument(
        "--reason",
        dest="reasons",
        action="append",
        help="retry only errors with this reason (repeatable; default all)",
    )
    p.add_argument("--num-encoders", type=int)
    p.add_argument("--cpus-per-encoder", type=float)
    p.add_argument("--device", choices=_choices("device"))
    p.add_argument("--address", dest="ray_address", help="Ray cluster address")


def _plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="size a tokenize job without encoding: units, items, hours, cost",
        argument_default=argparse.SUPPRESS,
        description="List the work `semtok tokenize` would do on INPUT (minus what "
        "OUTPUT already holds): units, items, audio hours from headers, "
        "estimated output size and encoder-hours. Encodes nothing.",
    )
    _job_flags(p)
    p.add_argument("--out", "--output", dest="output", help="output URL: skip what is committed there")
    p.add_argument(
        "--version",
        dest="dataset_version",
        help="dataset version under OUTPUT (default: from the codec flags, like tokenize)",
    )
    p.add_argument(
        "--x-real-time-per-encoder",
        type=float,
        default=None,
        help="audio seconds encoded per wall second by one encoder (default 1.4: the "
        "full-size codec at rate 50 on a 2-core CPU, bench/pipeline_throughput.py; "
        "measure yours on GPUs)",
    )
    p.add_argument("--encoders", type=int, help="encoders you will run: adds a wall-time estimate")
    p.add_argument("--threads", type=int, default=8, help="units read at once (default 8)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _status_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="runs and committed totals of an output",
        description="Summarise OUTPUT from its run records and manifest: per run "
        "(kind, start/end, items ok/failed, audio hours, wall, x real "
        "time, errors by reason) and committed totals per version.",
    )
    p.add_argument("output", help="output root URL (the folder holding dataset versions)")
    p.add_argument("--version", help="only this dataset version")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write an output as lhotse Shar, a Hugging Face dataset, or a flat token stream",
        description="Export the committed tokens of OUTPUT (one dataset version) into DIR: "
        "--to shar (lhotse Shar cuts with a `codes` array), hf (Parquet shards + dataset card), "
        "bin (tokens.bin + tokens.idx + vocab.json). Resumable: rerun the same command after an "
        "interruption; a rerun of a finished export does nothing.",
    )
    p.add_argument("output", help="output root URL (the folder holding dataset versions) or a version folder")
    p.add_argument("--to", dest="to", required=True, choices=_export_choices("to"), help="export format")
    p.add_argument("dest", metavar="DIR", help="export folder (local or fsspec URL): empty, or this export's")
    p.add_argument("--version", help="dataset version (needed when OUTPUT holds several)")
    p.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="export an output made with random codec weights (meaningless tokens; for tests)",
    )
    p.add_argument(
        "--order",
        choices=_export_choices("order"),
        help="--to bin: a frame's two tokens interleaved (default) or all semantic then all acoustic",
    )
    p.add_argument("--threads", type=int, help="units exported at once (default 4)")
    p.add_argument("--storage-options", help="fsspec options of OUTPUT (and DIR) as a JSON object")
    p.add_argument("--dest-storage-options", help="fsspec options of DIR as JSON (default: the above)")


def _export_choices(name: str) -> tuple[Any, ...]:
    from pipeline.config import field_choices
    from pipeline.export.job import ExportConfig

    return field_choices(ExportConfig, name)


def _compact_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compact",
        help="fold an output's manifest entries into one index file (faster reruns and reads)",
        description="Fold the per-unit manifest entries of every dataset version under OUTPUT (or "
        "--version) into a consolidated index, so reruns, verify, status and loaders read one "
        "file instead of one per unit. Takes the writer lease (exit 75 while a run writes); safe "
        "to interrupt and to repeat. Tokenize runs do this by themselves once enough entries exist.",
    )
    p.add_argument("output", help="output root URL (the folder holding dataset versions)")
    p.add_argument("--version", help="compact only this dataset version")


def _opt(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


def _run_plan(args: argparse.Namespace) -> int:
    import json

    from pipeline.ops.estimate import DEFAULT_X_REAL_TIME, plan_job

    fields = TokenizeConfig.field_names()
    flags = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    config = _build_config(_opt(args, "config"), {}, flags)
    _check_urls(config.input, config.output or None, what=("INPUT", "--out"))
    _check_input_exists(config)
    version = _opt(args, "dataset_version")
    if config.output and not version:  # the dataset version comes from the weights' digest
        _check_weights(config.codec_spec())
    speed = _opt(args, "x_real_time_per_encoder")
    report = plan_job(
        config,
        version=version,
        encoders=_opt(args, "encoders"),
        threads=_opt(args, "threads", 8),
        x_real_time_per_encoder=DEFAULT_X_REAL_TIME if speed is None else speed,
    )
    print(json.dumps(report.to_dict(), indent=1, sort_keys=True) if _opt(args, "json") else report.text())
    return 0


def _run_status(args: argparse.Namespace) -> int:
    import json

    from pipeline.ops.status import output_status

    _check_urls(args.output, what=("OUTPUT",))
    status = output_status(args.output, version=args.version)
    print(json.dumps(status.to_dict(), indent=1, sort_keys=True) if args.json else status.text())
    return 0


def _run_compact(args: argparse.Namespace) -> int:
    from pipeline.dataset.compaction import compact_output

    _check_urls(args.output, what=("OUTPUT",))
    for result in compact_output(args.output, version=args.version):
        print(f"compact {result.line()}")
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    import json

    from pipeline.ops.verify import verify

    _check_urls(args.output, args.input, what=("OUTPUT", "--input"))
    if args.input:
        _check_input_exists(TokenizeConfig(input=args.input))
    report = verify(
        args.output,
        input=args.input,
        version=args.version,
        input_kind=args.input_kind,
        files_per_unit=args.files_per_unit,
        glob=args.glob,
        deep=args.deep,
    )
    print(json.dumps(report.to_dict(), indent=1, sort_keys=True) if args.json else report.text())
    return 0 if report.ok else 1


def _run_retry(args: argparse.Namespace) -> int:
    from pipeline.tokenize.retry import retry_failed

    _check_urls(args.output, what=("OUTPUT",))
    overrides = {
        k: getattr(args, k)
        for k in ("num_encoders", "cpus_per_encoder", "device")
        if getattr(args, k) is not None
    }
    if overrides:
        TokenizeConfig(**overrides)  # a bad value fails here, not after the cluster started
    for spec in _recorded_specs(args.output, args.version, {}):
        _check_weights(spec)
    retry_failed(
        args.output,
        version=args.version,
        reasons=args.reasons,
        ray_address=args.ray_address,
        overrides=overrides,
    )
    return 0


def _run_audit(args: argparse.Namespace) -> int:
    from pipeline.audit.job import AuditConfig, run_audit

    fields = [f.name for f in dataclasses.fields(AuditConfig)]
    flags = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    text = [name for name in fields if is_text_field(AuditConfig, name)]
    settings = parse_settings(_opt(args, "settings"), fields, text_fields=text)
    _check_conflicts(settings, flags, args)
    config = AuditConfig(**{**settings, **flags})
    _check_urls(config.output, config.report, what=("OUTPUT", "--report"))
    for spec in _recorded_specs(config.output, config.version, config.storage_options, config.weights):
        _check_weights(spec, components=("encoder", "decoder"))
    result = run_audit(config)
    print(result.html_url)
    return 0


def _run_audit_diff(args: argparse.Namespace) -> int:
    import json

    from pipeline.audit.diff import diff_audits, load_audit, write_diff_report

    _check_urls(args.a, args.b, args.out, what=("A", "B", "--out"))
    a, b = load_audit(args.a), load_audit(args.b)
    diff = diff_audits(a, b, a_name=args.a, b_name=args.b)
    print(json.dumps(diff.to_dict(), indent=1, sort_keys=True) if args.json else diff.text())
    if args.out:
        print(write_diff_report(diff, a, b, args.out), file=sys.stderr)
    return 1 if args.fail_on_regression and diff.regressions else 0


def _json_options(text: str | None, flag: str) -> dict[str, Any] | None:
    import json

    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(f"{flag}: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(value, dict):
        raise CliError(f"{flag}: expected a JSON object of fsspec options, got {type(value).__name__}")
    return value


def _run_export(args: argparse.Namespace) -> int:
    from pipeline.export.job import ExportConfig, ExportError, run_export

    _check_urls(args.output, args.dest, what=("OUTPUT", "DIR"))
    if args.order is not None and args.to != "bin":
        raise CliError(f"--order applies to --to bin only, not --to {args.to}")
    flags = {
        "version": args.version,
        "order": args.order,
        "threads": args.threads,
        "storage_options": _json_options(args.storage_options, "--storage-options"),
        "dest_storage_options": _json_options(args.dest_storage_options, "--dest-storage-options"),
    }
    config = ExportConfig(
        output=args.output,
        to=args.to,
        dest=args.dest,
        allow_random_weights=args.allow_random_weights,
        **{k: v for k, v in flags.items() if v is not None},
    )
    try:
        result = run_export(config)
    except ExportError as error:
        raise CliError(str(error)) from None
    print(result.text())
    return 0


# -- config from file, --set and flags ----------------------------------------------------------


def parse_settings(
    settings: Sequence[str] | None, fields: Sequence[str] | None = None, *, text_fields: Sequence[str] = ()
) -> dict[str, Any]:
    """`--set FIELD=VALUE` pairs; values are YAML (numbers, lists, mappings, null).

    With `fields`, an unknown field is an error naming the closest known ones. A value that is not
    valid YAML (e.g. a glob `*.flac`), or a scalar for one of `text_fields`, is taken as the string
    given. A field set twice is an error.
    """
    import yaml

    parsed: dict[str, Any] = {}
    for setting in settings or ():
        field, sep, value = setting.partition("=")
        field = field.strip()
        if not sep or not field:
            raise ConfigError(f"--set {setting!r}: expected FIELD=VALUE")
        if fields is not None and field not in fields:
            raise ConfigError(unknown_field_message(field, list(fields), what="--set field"))
        if field in parsed:
            raise ConfigError(f"--set {field} given twice; give one")
        try:
            parsed[field] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            parsed[field] = value
        if field in text_fields and isinstance(parsed[field], (int, float, bool)):
            parsed[field] = value.strip()
    return parsed


def _flag_name(args: argparse.Namespace, dest: str) -> str:
    names = getattr(args, "_flag_names", {}) or {}
    return names.get(dest, "--" + dest.replace("_", "-"))


def _check_conflicts(settings: dict[str, Any], flags: dict[str, Any], args: argparse.Namespace) -> None:
    both = sorted(set(settings) & set(flags))
    if both:
        raise ConfigError(f"--set {both[0]} conflicts with {_flag_name(args, both[0])}; give one")


def _build_config(path: str | None, settings: dict[str, Any], flags: dict[str, Any]) -> TokenizeConfig:
    data = read_config_file(path) if path else {}
    data.update(settings)
    data.update(flags)
    return TokenizeConfig.from_dict(data)


def tokenize_config(args: argparse.Namespace) -> TokenizeConfig:
    """Config file, then `--set FIELD=VALUE`, then the named flags. A field given both by --set and
    by its flag is an error (neither may silently win)."""
    fields = TokenizeConfig.field_names()
    flags = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    text = [name for name in fields if is_text_field(TokenizeConfig, name)]
    settings = parse_settings(_opt(args, "settings"), fields, text_fields=text)
    _check_conflicts(settings, flags, args)
    config = _build_config(_opt(args, "config"), settings, flags)
    if not config.input or not config.output:
        raise ConfigError("tokenize needs INPUT and --out (or `input`/`output` in --config)")
    return config


# -- early checks: before any cluster starts ----------------------------------------------------


def _check_urls(*urls: str | None, what: Sequence[str]) -> None:
    """A URL whose scheme fsspec does not know, or whose package is missing: one line, exit 2."""
    import importlib.util

    import fsspec
    from fsspec.core import split_protocol
    from fsspec.registry import known_implementations, registry

    known = set(fsspec.available_protocols())

    def installed(proto: str) -> bool:
        impl = known_implementations.get(proto, {}).get("class", "")
        return proto in registry or bool(impl and importlib.util.find_spec(impl.split(".")[0]))

    for url, label in zip(urls, what, strict=True):
        if not url:
            continue
        for part in str(url).split("::"):
            proto = split_protocol(part)[0]
            if proto is None or proto in ("file", "local"):
                continue
            if proto not in known:
                supported = ", ".join(p for p in _COMMON_SCHEMES if p in known and installed(p))
                raise CliError(
                    f"error: unknown URL scheme {proto!r} in {label} {url}; supported: {supported}"
                )
            try:
                fsspec.get_filesystem_class(proto)
            except ImportError as error:
                first = (str(error).strip().splitlines() or [""])[0]
                raise CliError(
                    f"error: URL scheme {proto!r} in {label} {url} needs a package that is "
                    f"not installed: {first}"
                ) from None


def _check_input_exists(config: TokenizeConfig) -> None:
    from pipeline.io.storage import open_filesystem

    fs, path = open_filesystem(config.input, config.storage_options)
    if not fs.exists(path.rstrip("/") or path):
        raise CliError(f"input not found: {config.input}")


def _check_weights(spec: Any, *, components: tuple[str, ...] = ("encoder",)) -> None:
    from codec.registry import check_weights

    check_weights(spec, components=components)


def _recorded_specs(
    output: str, version: str | None, storage_options: dict[str, Any], weights: str | None = None
) -> list[Any]:
    """The codec of each dataset version under `output` as its latest tokenize record says (with
    `weights` replacing the recorded source). Anything unreadable gives no spec: the command
    itself reports it."""
    from pipeline.dataset.layout import OutputLayout
    from pipeline.dataset.run_records import latest_tokenize_record
    from pipeline.dataset.versions import dataset_versions
    from pipeline.io.storage import open_filesystem

    specs = []
    try:
        fs, root = open_filesystem(output, storage_options)
        for name in dataset_versions(fs, root, version):
            record = latest_tokenize_record(fs, OutputLayout(output.rstrip("/"), name))
            data = {k: v for k, v in record["config"].items() if k in TokenizeConfig.field_names()}
            data["storage_options"] = {}
            if weights:
                data["weights"] = weights
            specs.append(TokenizeConfig.from_dict(data).codec_spec())
    except (ValueError, FileNotFoundError, KeyError, TypeError):
        return []
    return specs


# -- main ------------------------------------------------------------------------------------------

_SECRET_PATTERNS = (
    (re.compile(r"(?<![A-Z0-9])(AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"), "***"),
    (
        re.compile(
            r"(?i)((?:secret|token|password|passwd|signature|credential|key)[\w-]*\s*[=:]\s*)[^\s&,;]+"
        ),
        r"\1***",
    ),
    (re.compile(r"(https?://[^\s?]+)\?\S+"), r"\1?***"),
)


def _scrub(text: str) -> str:
    """One line of an error message, without what looks like a credential."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    for pattern, replacement in _SECRET_PATTERNS:
        line = pattern.sub(replacement, line)
    return line[:500]


def _one_line(text: object) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _storage_error(error: BaseException) -> BaseException | None:
    """The storage failure behind `error` (disk full, permission, S3 access denied), if any."""
    cause = getattr(error, "cause", None)  # Ray's RayTaskError wraps the worker's exception
    for candidate in (error, cause if isinstance(cause, BaseException) else None):
        if candidate is None or isinstance(candidate, FileNotFoundError):
            continue
        module = type(candidate).__module__
        if isinstance(candidate, OSError) or module.startswith(("botocore", "aiobotocore", "s3fs", "gcsfs")):
            return candidate
    return None


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _tokenize_parser(sub)
    _verify_parser(sub)
    _retry_parser(sub)
    _plan_parser(sub)
    _status_parser(sub)
    _compact_parser(sub)
    _audit_parser(sub)
    _audit_diff_parser(sub)
    _export_parser(sub)
    demo = sub.add_parser("demo-corpus", help="write a few synthetic clips (and a broken file) to try on")
    demo.add_argument("folder")
    for command in sub.choices.values():  # how each dest was spelled, for error messages
        names = {
            a.dest: (max(a.option_strings, key=len) if a.option_strings else a.dest.upper())
            for a in command._actions
        }
        if "output" in names and names["output"] == "--output":
            names["output"] = "--out"
        command.set_defaults(_flag_names=names)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "tokenize":
        from pipeline.tokenize.job import run_tokenize

        config = tokenize_config(args)
        _check_urls(config.input, config.output, what=("INPUT", "--out"))
        _check_input_exists(config)
        _check_weights(config.codec_spec())
        run_tokenize(config)
        if config.audit_requested:
            from pipeline.audit.job import audit_after_tokenize

            audit_after_tokenize(config)
        return 0
    if args.command == "verify":
        return _run_verify(args)
    if args.command == "retry-failed":
        return _run_retry(args)
    if args.command == "plan":
        return _run_plan(args)
    if args.command == "status":
        return _run_status(args)
    if args.command == "compact":
        return _run_compact(args)
    if args.command == "audit":
        return _run_audit(args)
    if args.command == "audit-diff":
        return _run_audit_diff(args)
    if args.command == "export":
        return _run_export(args)
    if args.command == "demo-corpus":
        from jobs.demo_corpus import write_demo_corpus

        for path in write_demo_corpus(args.folder):
            print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from codec.checkpoint import WeightsError
    from pipeline.dataset.lease import OutputBusy

    restore = install_handlers()
    verbose = False
    try:
        args = _build_parser().parse_args(argv)
        verbose = bool(args.verbose)
        logging.basicConfig(
            level=logging.INFO if verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return _dispatch(args)
    except Interrupted as stop:
        print(stop.message(), file=sys.stderr, flush=True)
        return stop.exit_status
    except SystemExit as exit_:
        if exit_.code == signal.SIGTERM:  # ray.init's own SIGTERM handler: sys.exit(SIGTERM)
            stop = Interrupted(signal.SIGTERM)
            print(stop.message(), file=sys.stderr, flush=True)
            return stop.exit_status
        raise
    except UsageError as error:
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except CliError as error:
        print(f"{PROG}: {_one_line(error)}", file=sys.stderr)
        return error.status
    except WeightsError as error:
        print(f"{PROG}: weights error: {_one_line(error)}", file=sys.stderr)
        return 2
    except ConfigError as error:
        print(f"{PROG}: config error: {_one_line(error)}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"{PROG}: not found: {_scrub(error)}", file=sys.stderr)
        return 2
    except OutputBusy as error:  # another run writes this output: try again later (EX_TEMPFAIL)
        print(f"{PROG}: {_one_line(error)}", file=sys.stderr)
        return 75
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line, status 1
        storage = _storage_error(error)
        if storage is not None:
            if verbose:
                traceback.print_exc()
            print(f"{PROG}: storage error: {type(storage).__name__}: {_scrub(storage)}", file=sys.stderr)
            return 1
        if verbose:
            traceback.print_exc()
            print(f"{PROG}: error: {type(error).__name__}: {_scrub(error)}", file=sys.stderr)
        else:
            print(
                f"{PROG}: error: {type(error).__name__}: {_scrub(error)}; rerun with -v for the traceback",
                file=sys.stderr,
            )
        return 1
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
