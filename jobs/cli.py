"""The `semtok` command line: parses arguments into a config and calls the pipeline."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.config import ConfigError, TokenizeConfig


def _job_flags(p: argparse.ArgumentParser) -> None:
    """Input and codec flags that name the job's work and its dataset version (tokenize and plan)."""
    p.add_argument("input", nargs="?", help="input URL (or set `input` in --config)")
    p.add_argument("--config", help="YAML file of TokenizeConfig fields; flags override it")
    p.add_argument("--input-kind", choices=["auto", "files", "tar", "parquet", "manifest"])
    p.add_argument("--glob", help="glob below INPUT, e.g. '**/*.flac'")
    p.add_argument("--files-per-unit", type=int)
    p.add_argument("--format", dest="formats", action="append", choices=["parquet", "webdataset"],
                   help="output format (repeatable; default parquet)")
    p.add_argument("--weights", help="codec weights: folder, fsspec URL, 'hub' or 'random:SEED'")
    p.add_argument("--token-rate", type=int, choices=[25, 50, 100])
    p.add_argument("--semantic-vocab-size", type=int, choices=[4096, 8192, 16384, 32768])
    p.add_argument("--codec-size", choices=["full", "tiny"], help="'tiny': small test architecture")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--channel-policy", choices=["first", "mean"])


def _tokenize_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenize", help="tokenize an audio corpus into SemantiCodec tokens",
                       description="Tokenize INPUT (folder, prefix, glob, tar shards, Parquet, or a "
                                   "JSONL/CSV manifest; local, s3://, gs://) into OUTPUT.")
    _job_flags(p)
    p.add_argument("--out", "--output", dest="output", help="output URL")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--num-encoders", type=int)
    p.add_argument("--gpus-per-encoder", type=float)
    p.add_argument("--cpus-per-encoder", type=float)
    p.add_argument("--encode-batch-segments", type=int)
    p.add_argument("--max-error-fraction", type=float)
    p.add_argument("--set", dest="settings", action="append", metavar="FIELD=VALUE",
                   help="any TokenizeConfig field (YAML value), e.g. --set read_cpus=1")
    p.add_argument("--address", dest="ray_address", help="Ray cluster address (default: RAY_ADDRESS "
                                                         "or a new local Ray)")
    audit = p.add_mutually_exclusive_group()
    audit.add_argument("--audit-sample", type=int, metavar="N",
                       help="after the run, audit N sampled items (see `semtok audit`)")
    audit.add_argument("--audit-fraction", type=float, metavar="F", help="after the run, audit a fraction")
    p.add_argument("--audit-seed", type=int)
    p.add_argument("--audit-steps", type=int, help="DDIM steps of the audit's decoder (default 50)")
    p.add_argument("--audit-domain", choices=["speech", "music", "sound"],
                   help="domain of items whose metadata names none (default sound)")


def _audit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="decode a sample of an output, score it, write an HTML report",
                       description="Sample tokenized items of OUTPUT (seeded, stratified by source and "
                                   "shard), decode them on a pool of codec replicas, score each against "
                                   "its original, and write index.html + audit.json (default: under "
                                   "<version>/audits/).")
    p.add_argument("output", help="output root URL (the folder holding dataset versions)")
    p.add_argument("--version", help="dataset version (needed when OUTPUT holds several)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--sample", type=int, metavar="N", help="items to audit (default 20)")
    size.add_argument("--fraction", type=float, metavar="F", help="fraction of the items to audit")
    p.add_argument("--seed", type=int, help="sampling and decoding seed (default 0): a rerun audits "
                                            "the same items with the same noise")
    p.add_argument("--steps", type=int, help="DDIM steps (default 50, the official decode's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 2.0)")
    p.add_argument("--max-item-seconds", type=float, help="audit the first S seconds of each item "
                                                          "(default 10.24: one decoder window)")
    p.add_argument("--domain", dest="default_domain", choices=["speech", "music", "sound"],
                   help="domain of items whose metadata has no `domain` (default sound)")
    p.add_argument("--weights", help="where this cluster reads the codec weights (default: as recorded)")
    p.add_argument("--report", help="report folder URL (default: <version>/audits/<audit id>)")
    p.add_argument("--references", help="JSON list of published figures to draw, each with its source")
    p.add_argument("--worst-k", type=int)
    p.add_argument("--random-k", type=int)
    p.add_argument("--num-decoders", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", dest="settings", action="append", metavar="FIELD=VALUE",
                   help="any AuditConfig field (YAML value), e.g. --set decode_batch_items=8")
    p.add_argument("--address", dest="ray_address", help="Ray cluster address")


def _audit_diff_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit-diff", help="compare two audits: metric shifts and regressions",
                       description="Compare audit A with audit B (folders or audit.json URLs): mean of "
                                   "each metric overall, per domain and per source, paired over shared "
                                   "items, with 95 %% intervals.")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--out", help="also write an HTML comparison (index.html, diff.json, plots) here")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit status 1 when any metric regressed beyond its 95 %% interval")


def _verify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check a committed output: missing, duplicate, orphaned, bad files",
                       description="Check every dataset version under OUTPUT (or --version): items "
                                   "planned but not committed (with --input), duplicate item ids, "
                                   "orphaned data files, files that do not match the manifest. "
                                   "Exit status 1 when anything is wrong.")
    p.add_argument("output", help="output root URL (the folder holding dataset versions)")
    p.add_argument("--input", help="input URL to plan against (settings from the latest run record)")
    p.add_argument("--version", help="check only this dataset version")
    p.add_argument("--input-kind", choices=["auto", "files", "tar", "parquet", "manifest"])
    p.add_argument("--files-per-unit", type=int)
    p.add_argument("--glob")
    p.add_argument("--deep", action="store_true", help="also check every file's sha256 (reads all bytes)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _retry_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retry-failed", help="reprocess only the items in the errors table",
                       description="Read, decode and encode again the items in OUTPUT's errors "
                                   "table (e.g. after a fix); successes move into the tokens, the "
                                   "rest stay in errors with their latest reason.")
    p.add_argument("output", help="output root URL")
    p.add_argument("--version", help="retry only this dataset version")
    p.add_argument("--reason", dest="reasons", action="append",
                   help="retry only errors with this reason (repeatable; default all)")
    p.add_argument("--num-encoders", type=int)
    p.add_argument("--cpus-per-encoder", type=float)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--address", dest="ray_address", help="Ray cluster address")


def _plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="size a tokenize job without encoding: units, items, hours, cost",
                       description="List the work `semtok tokenize` would do on INPUT (minus what "
                                   "OUTPUT already holds): units, items, audio hours from headers, "
                                   "estimated output size and encoder-hours. Encodes nothing.")
    _job_flags(p)
    p.add_argument("--out", "--output", dest="output", help="output URL: skip what is committed there")
    p.add_argument("--version", dest="dataset_version",
                   help="dataset version under OUTPUT (default: from the codec flags, like tokenize)")
    p.add_argument("--x-real-time-per-encoder", type=float, default=None,
                   help="audio seconds encoded per wall second by one encoder (default 1.4: the "
                        "full-size codec at rate 50 on a 2-core CPU, bench/pipeline_throughput.py; "
                        "measure yours on GPUs)")
    p.add_argument("--encoders", type=int, help="encoders you will run: adds a wall-time estimate")
    p.add_argument("--threads", type=int, default=8, help="units read at once (default 8)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _status_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="runs and committed totals of an output",
                       description="Summarise OUTPUT from its run records and manifest: per run "
                                   "(kind, start/end, items ok/failed, audio hours, wall, x real "
                                   "time, errors by reason) and committed totals per version.")
    p.add_argument("output", help="output root URL (the folder holding dataset versions)")
    p.add_argument("--version", help="only this dataset version")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_plan(args: argparse.Namespace) -> int:
    import json

    from pipeline.planning import DEFAULT_X_REAL_TIME, plan_job

    skip = ("command", "config", "verbose", "dataset_version", "x_real_time_per_encoder", "encoders",
            "threads", "json")
    config = TokenizeConfig.load(args.config, **{k: v for k, v in vars(args).items() if k not in skip})
    speed = DEFAULT_X_REAL_TIME if args.x_real_time_per_encoder is None else args.x_real_time_per_encoder
    report = plan_job(config, version=args.dataset_version, encoders=args.encoders, threads=args.threads,
                      x_real_time_per_encoder=speed)
    print(json.dumps(report.to_dict(), indent=1, sort_keys=True) if args.json else report.text())
    return 0


def _run_status(args: argparse.Namespace) -> int:
    import json

    from pipeline.status import output_status

    status = output_status(args.output, version=args.version)
    print(json.dumps(status.to_dict(), indent=1, sort_keys=True) if args.json else status.text())
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    import json

    from pipeline.verify import verify

    report = verify(args.output, input=args.input, version=args.version, input_kind=args.input_kind,
                    files_per_unit=args.files_per_unit, glob=args.glob, deep=args.deep)
    print(json.dumps(report.to_dict(), indent=1, sort_keys=True) if args.json else report.text())
    return 0 if report.ok else 1


def _run_retry(args: argparse.Namespace) -> int:
    from pipeline.retry_failed import retry_failed

    overrides = {k: getattr(args, k) for k in ("num_encoders", "cpus_per_encoder", "device")
                 if getattr(args, k) is not None}
    retry_failed(args.output, version=args.version, reasons=args.reasons, ray_address=args.ray_address,
                 overrides=overrides)
    return 0


def _run_audit(args: argparse.Namespace) -> int:
    from pipeline.audit import AuditConfig, run_audit

    flags = {k: v for k, v in vars(args).items()
             if k not in ("command", "verbose", "settings") and v is not None}
    try:
        config = AuditConfig(**{**parse_settings(args.settings), **flags})
    except TypeError as error:  # an unknown --set field
        raise ConfigError(str(error)) from None
    result = run_audit(config)
    print(result.html_url)
    return 0


def _run_audit_diff(args: argparse.Namespace) -> int:
    import json

    from pipeline.audit_diff import diff_audits, load_audit, write_diff_report

    a, b = load_audit(args.a), load_audit(args.b)
    diff = diff_audits(a, b, a_name=args.a, b_name=args.b)
    print(json.dumps(diff.to_dict(), indent=1, sort_keys=True) if args.json else diff.text())
    if args.out:
        print(write_diff_report(diff, a, b, args.out), file=sys.stderr)
    return 1 if args.fail_on_regression and diff.regressions else 0


def parse_settings(settings: Sequence[str] | None) -> dict[str, Any]:
    """`--set FIELD=VALUE` pairs; values are YAML (numbers, lists, mappings, null)."""
    import yaml

    parsed: dict[str, Any] = {}
    for setting in settings or ():
        field, sep, value = setting.partition("=")
        if not sep or not field.strip():
            raise ConfigError(f"--set {setting!r}: expected FIELD=VALUE")
        parsed[field.strip()] = yaml.safe_load(value) if value.strip() else None
    return parsed


def tokenize_config(args: argparse.Namespace) -> TokenizeConfig:
    """Config file, then `--set FIELD=VALUE`, then the named flags: the most specific wins."""
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "verbose", "settings")}
    if "audit_seed" in flags and flags["audit_seed"] is None:
        flags.pop("audit_seed")
    config = TokenizeConfig.load(args.config, **{**parse_settings(args.settings), **flags})
    if not config.input or not config.output:
        raise ConfigError("tokenize needs INPUT and --out (or `input`/`output` in --config)")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="semtok", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _tokenize_parser(sub)
    _verify_parser(sub)
    _retry_parser(sub)
    _plan_parser(sub)
    _status_parser(sub)
    _audit_parser(sub)
    _audit_diff_parser(sub)
    demo = sub.add_parser("demo-corpus", help="write a few synthetic clips (and a broken file) to try on")
    demo.add_argument("folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "tokenize":
            from pipeline.tokenize import run_tokenize

            run_tokenize(tokenize_config(args))
        elif args.command == "verify":
            return _run_verify(args)
        elif args.command == "retry-failed":
            return _run_retry(args)
        elif args.command == "plan":
            return _run_plan(args)
        elif args.command == "status":
            return _run_status(args)
        elif args.command == "audit":
            return _run_audit(args)
        elif args.command == "audit-diff":
            return _run_audit_diff(args)
        elif args.command == "demo-corpus":
            from jobs.demo_corpus import write_demo_corpus

            for path in write_demo_corpus(args.folder):
                print(path)
    except ConfigError as error:
        print(f"semtok: config error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"semtok: not found: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
