"""The `semtok` command line: parses arguments into a config and calls the pipeline."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pipeline.config import ConfigError, TokenizeConfig


def _tokenize_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenize", help="tokenize an audio corpus into SemantiCodec tokens",
                       description="Tokenize INPUT (folder, prefix, glob, tar shards, Parquet, or a "
                                   "JSONL/CSV manifest; local, s3://, gs://) into OUTPUT.")
    p.add_argument("input", nargs="?", help="input URL (or set `input` in --config)")
    p.add_argument("--out", "--output", dest="output", help="output URL")
    p.add_argument("--config", help="YAML file of TokenizeConfig fields; flags override it")
    p.add_argument("--input-kind", choices=["auto", "files", "tar", "parquet", "manifest"])
    p.add_argument("--glob", help="glob below INPUT, e.g. '**/*.flac'")
    p.add_argument("--format", dest="formats", action="append", choices=["parquet", "webdataset"],
                   help="output format (repeatable; default parquet)")
    p.add_argument("--weights", help="codec weights: folder, fsspec URL, 'hub' or 'random:SEED'")
    p.add_argument("--token-rate", type=int, choices=[25, 50, 100])
    p.add_argument("--semantic-vocab-size", type=int, choices=[4096, 8192, 16384, 32768])
    p.add_argument("--codec-size", choices=["full", "tiny"], help="'tiny': small test architecture")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--channel-policy", choices=["first", "mean"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--num-encoders", type=int)
    p.add_argument("--gpus-per-encoder", type=float)
    p.add_argument("--cpus-per-encoder", type=float)
    p.add_argument("--encode-batch-segments", type=int)
    p.add_argument("--files-per-unit", type=int)
    p.add_argument("--max-error-fraction", type=float)
    p.add_argument("--address", dest="ray_address", help="Ray cluster address (default: RAY_ADDRESS "
                                                         "or a new local Ray)")


def tokenize_config(args: argparse.Namespace) -> TokenizeConfig:
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config", "verbose")}
    config = TokenizeConfig.load(args.config, **overrides)
    if not config.input or not config.output:
        raise ConfigError("tokenize needs INPUT and --out (or `input`/`output` in --config)")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="semtok", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _tokenize_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "tokenize":
            from pipeline.tokenize import run_tokenize

            run_tokenize(tokenize_config(args))
    except ConfigError as error:
        print(f"semtok: config error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
