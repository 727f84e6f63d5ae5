"""`TokenizeConfig`: one typed, validated object for a tokenize job (YAML file + overrides).

Every field can come from a YAML file and be overridden from the command line; the effective config
is written next to the output. The field types (pydantic v2) are the single source of the allowed
values: the CLI's choices and the shipped JSON Schema (`pipeline/schemas/`) are derived from them.
Every invalid value raises `ConfigError`, one line naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import field
from typing import Annotated, Any, Literal

import pydantic
from pydantic import ConfigDict, Field
from typing_extensions import dataclass_transform

from codec import CodecSpec

InputKind = Literal["auto", "files", "tar", "parquet", "manifest"]
OutputFormat = Literal["parquet", "webdataset"]
Device = Literal["auto", "cpu", "cuda"]
ChannelPolicy = Literal["first", "mean"]
Resampler = Literal["official", "soxr-hq"]
TokenRate = Literal[25, 50, 100]
SemanticVocabSize = Literal[4096, 8192, 16384, 32768]
CodecSize = Literal["full", "tiny"]
DType = Literal["float32", "bfloat16", "float16"]
EncodeBatching = Literal["official", "batched"]
Domain = Literal["speech", "music", "sound"]

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]

# Shared by every validated config class: unknown fields are errors, YAML values are coerced
# where lossless (a list becomes a tuple, 1 becomes 1.0), NaN and infinity are refused.
MODEL_CONFIG = ConfigDict(extra="forbid", strict=False, allow_inf_nan=False)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


_Config = typing.TypeVar("_Config")


# dataclass_transform: type checkers see the decorated class as the dataclass it is (typed __init__,
# dataclasses.asdict/fields); typing_extensions for Python 3.10 (pydantic depends on it).
@dataclass_transform(field_specifiers=(dataclasses.field, Field))
def validated_dataclass(cls: type[_Config]) -> type[_Config]:
    """`pydantic.dataclasses.dataclass` whose validation errors are one-line `ConfigError`s.

    The class stays a standard dataclass (`dataclasses.asdict/fields/replace` work) and is checked
    on every construction, `dataclasses.replace` included.
    """
    # the same class, made a (validating) dataclass in place
    model = typing.cast(type[_Config], pydantic.dataclasses.dataclass(config=MODEL_CONFIG)(cls))
    init = model.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except pydantic.ValidationError as error:
            raise ConfigError(describe_validation_error(model, error, kwargs)) from None

    model.__init__ = __init__  # type: ignore[method-assign]  # wraps the generated __init__ on purpose
    return model


def describe_validation_error(model: type, error: pydantic.ValidationError, given: dict[str, Any]) -> str:
    """The first problem of `error` as one line: `field=value: what is allowed`."""
    first = error.errors(include_url=False)[0]
    kind, loc, ctx = first["type"], first["loc"], first.get("ctx") or {}
    if kind == "value_error" and isinstance(ctx.get("error"), ConfigError):  # a cross-field check
        return str(ctx["error"])
    if not loc:
        return str(first["msg"])
    name = str(loc[0])
    names = [f.name for f in dataclasses.fields(model)]
    if kind == "unexpected_keyword_argument":
        return unknown_field_message(name, names)
    if kind in ("missing", "missing_argument"):
        return f"{name}: required"
    value = given.get(name, first.get("input"))
    return f"{name}={value!r}: {_requirement(model, name, kind, ctx, str(first['msg']))}"


def unknown_field_message(name: str, known: list[str], *, what: str = "config field") -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown {what} {name!r}{hint}"


def _requirement(model: type, name: str, kind: str, ctx: dict[str, Any], msg: str) -> str:
    allowed = field_choices(model, name)
    if kind == "literal_error" and allowed:
        return f"must be one of {', '.join(map(str, allowed))}"
    bounds = {
        "greater_than": "> {gt}",
        "greater_than_equal": ">= {ge}",
        "less_than": "< {lt}",
        "less_than_equal": "<= {le}",
    }
    if kind in bounds:
        return "must be " + bounds[kind].format(**ctx)
    words = {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "string": "a string",
        "tuple": "a list",
        "list": "a list",
        "dict": "a mapping",
        "finite": "a finite number",
        "too_short": "a non-empty list",
    }
    for prefix, word in words.items():
        if kind.startswith(prefix):
            return f"must be {word}" + (" (or null)" if _optional(model, name) else "")
    return msg[:1].lower() + msg[1:]


@functools.cache
def _hints(model: type) -> dict[str, Any]:
    return typing.get_type_hints(model, include_extras=True)


def _optional(model: type, name: str) -> bool:
    hint = _hints(model).get(name)
    return type(None) in typing.get_args(hint) and typing.get_origin(hint) in (typing.Union, types.UnionType)


def is_text_field(model: type, name: str) -> bool:
    """Whether field `name` holds free text (`str` or `str | None`), e.g. to keep `--set id_prefix=2024`
    a string rather than YAML's number."""
    hint = _hints(model).get(name)
    args = (
        set(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else {hint}
    )
    return str in args and args <= {str, type(None)}


def field_choices(model: type, name: str) -> tuple[Any, ...]:
    """The `Literal` values allowed for field `name` (also inside Optional/tuple); () when free."""

    def literals(hint: Any) -> tuple[Any, ...]:
        origin = typing.get_origin(hint)
        if origin is Literal:
            return typing.get_args(hint)
        if origin is None:
            return ()
        return tuple(v for arg in typing.get_args(hint) for v in literals(arg))

    return literals(_hints(model).get(name))


@validated_dataclass
class TokenizeConfig:
    input: str = ""
    output: str = ""
    input_kind: InputKind = "auto"
    glob: str | None = None
    files_per_unit: PositiveInt = 256
    audio_column: str | None = None
    uri_column: str | None = None
    formats: Annotated[tuple[OutputFormat, ...], Field(min_length=1)] = ("parquet",)
    channel_policy: ChannelPolicy = "first"
    # how decoded audio reaches 16 kHz: the official reader's resampler, or soxr's high quality
    resampler: Resampler = "official"
    max_audio_seconds: PositiveFloat = 4 * 3600.0
    # prefix of every item id, so several corpora can share one output without id clashes
    id_prefix: str | None = None
    # URL schemes a manifest may point at besides the input's own (a manifest must not make the
    # workers read arbitrary places with the job's credentials)
    allow_manifest_schemes: tuple[str, ...] = ()
    # follow symlinks out of a local input root (off: a link cannot pull in files from elsewhere)
    follow_links: bool = False
    # per-item limits, so one pathological file cannot stall or exhaust a worker
    item_timeout_s: PositiveFloat = 300.0  # read + decode wall time of one item
    max_item_bytes: PositiveInt = 4 * 2**30  # compressed size read
    max_decoded_bytes: PositiveInt = 2 * 2**30  # float32 PCM after decoding (header estimate, then actual)
    # address space a decode may use in its child process beyond the idle child (None: no cap)
    max_decode_memory_bytes: PositiveInt | None = 8 * 2**30
    max_item_attempts: PositiveInt = 3  # deaths of a worker on one item before it becomes an error row
    # items this long or longer stream to a local float32 spill file instead of memory (flat worker
    # memory, same tokens; their budget is max_spill_bytes, not max_decoded_bytes). None: never
    stream_min_seconds: Annotated[float, Field(ge=0)] | None = 600.0
    max_spill_bytes: PositiveInt = 2 * 2**30  # one streamed item's spill file (16 kHz float32: 9.3 h)
    spill_dir: str | None = None  # local folder for spill files (None: <system temp>/semtok-spill)
    # items this big or bigger are copied from storage to a local file in spill_dir in 8 MiB chunks
    # and decoded from it, never held whole in a worker's memory. None: every item read into memory
    spool_min_bytes: PositiveInt | None = 64 * 2**20
    # codec
    codec: str = "semanticodec"
    weights: str | None = None
    token_rate: TokenRate = 50
    semantic_vocab_size: SemanticVocabSize = 16384
    codec_size: CodecSize = "full"
    dtype: DType = "float32"
    # "official": each segment keeps the official (one segment at a time) rounding in any batch, so
    # tokens are the official ones bit for bit; "batched": the whole batch through every op, faster
    # where that rounding cannot be batched (e.g. some GPUs); tokens may differ at near-ties
    encode_batching: EncodeBatching = "official"
    # execution
    ray_address: str | None = None
    device: Device = "auto"
    num_encoders: PositiveInt | None = None
    gpus_per_encoder: PositiveFloat = 1.0
    cpus_per_encoder: PositiveFloat | None = None
    encode_batch_segments: PositiveInt | None = None
    read_cpus: PositiveFloat = 0.5
    object_store_budget_mb: PositiveInt | None = None  # None: 512 MiB per encoder, at least 1 GiB
    commit_threads: PositiveInt = 8  # per committer
    # committer actors (assemble + commit units); None: 1 for a local output, else 1 per 8 encoders (≤ 8)
    committers: PositiveInt | None = None
    max_error_fraction: Fraction | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    progress_interval_s: PositiveFloat = 5.0
    # quality audit after the run (`semtok audit`): off unless a sample size or fraction is given
    audit_sample: PositiveInt | None = None
    audit_fraction: Annotated[float, Field(gt=0, le=1)] | None = None
    audit_seed: int = 0
    audit_steps: PositiveInt | None = None  # DDIM steps (default: the audit's, 50)
    audit_domain: Domain | None = None  # domain of items whose metadata names none (default: sound)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """The checks that involve several fields (each field's own type and range are typed)."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: {why}")

        if self.audit_sample is not None and self.audit_fraction is not None:
            raise bad("audit_fraction", "give audit_sample or audit_fraction, not both")
        if self.codec_size == "tiny" and not (self.weights or "").startswith("random:"):
            raise bad("weights", "the tiny codec has random weights only: use --weights random:SEED")

    @property
    def audit_requested(self) -> bool:
        return self.audit_sample is not None or self.audit_fraction is not None

    def codec_spec(self) -> CodecSpec:
        return CodecSpec(
            self.codec,
            {
                "token_rate": self.token_rate,
                "semantic_vocab_size": self.semantic_vocab_size,
                "weights": self.weights,
                "size": self.codec_size,
                "dtype": self.dtype,
                # named only when not the default: other codecs need not know the option
                **({"encode_batching": self.encode_batching} if self.encode_batching != "official" else {}),
            },
        )

    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["formats"] = list(self.formats)
        data["allow_manifest_schemes"] = list(self.allow_manifest_schemes)
        if redact:
            from pipeline.io.storage import redact_options

            data["storage_options"] = redact_options(self.storage_options)
        return data

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def choices(cls, name: str) -> tuple[Any, ...]:
        """The allowed values of field `name` (for the CLI's `choices=`)."""
        return field_choices(cls, name)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizeConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"expected a mapping of config fields, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ConfigError(unknown_field_message(unknown[0], cls.field_names()))
        return cls(**data)

    @classmethod
    def load(cls, path: str | None = None, **overrides: Any) -> TokenizeConfig:
        """Fields from a YAML file (optional), then `overrides` (None values are ignored)."""
        data: dict[str, Any] = {}
        if path:
            data.update(read_config_file(path))
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)


def read_config_file(path: str) -> dict[str, Any]:
    """A YAML mapping of config fields; `ConfigError` (one line) when missing or not a mapping."""
    import fsspec
    import yaml

    try:
        with fsspec.open(path, "r") as handle:
            loaded = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"config file {path}: not valid YAML{line}: {problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {path}: expected a mapping of config fields, got {type(loaded).__name__}"
        )
    return loaded


def tokenize_config_schema() -> dict[str, Any]:
    """JSON Schema of the YAML job config (what `TokenizeConfig.load` accepts from a file)."""
    schema = pydantic.TypeAdapter(TokenizeConfig).json_schema()
    schema["title"] = "semtok tokenize job config"
    schema["description"] = (
        "Fields of pipeline.config.TokenizeConfig, as given in a YAML job "
        "config (generated: python -m pipeline.config > "
        "pipeline/schemas/tokenize-config.schema.json)"
    )
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


SCHEMA_FILE = "schemas/tokenize-config.schema.json"


def shipped_schema_text() -> str:
    """The schema file as written to pipeline/schemas/ (stable formatting, trailing newline)."""
    import json

    return json.dumps(tokenize_config_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # regenerate the shipped schema: python -m pipeline.config > FILE
    print(shipped_schema_text(), end="")
