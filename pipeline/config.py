"""`TokenizeConfig`: one typed, validated object for a tokenize job (YAML file + overrides).

Every field can come from a YAML file and be overridden from the command line; the effective config
is written next to the output. Validation names the bad field and value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from codec import CodecSpec

INPUT_KINDS = ("auto", "files", "tar", "parquet", "manifest")
FORMATS = ("parquet", "webdataset")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


@dataclass
class TokenizeConfig:
    input: str = ""
    output: str = ""
    input_kind: str = "auto"
    glob: str | None = None
    files_per_unit: int = 256
    audio_column: str | None = None
    uri_column: str | None = None
    formats: tuple[str, ...] = ("parquet",)
    channel_policy: str = "first"
    max_audio_seconds: float = 4 * 3600.0
    # codec
    codec: str = "semanticodec"
    weights: str | None = None
    token_rate: int = 50
    semantic_vocab_size: int = 16384
    codec_size: str = "full"
    dtype: str = "float32"
    # execution
    ray_address: str | None = None
    device: str = "auto"
    num_encoders: int | None = None
    gpus_per_encoder: float = 1.0
    cpus_per_encoder: float | None = None
    encode_batch_segments: int | None = None
    read_cpus: float = 0.5
    object_store_budget_mb: int | None = None  # None: 512 MiB per encoder, at least 1 GiB
    commit_threads: int = 8
    max_error_fraction: float | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    progress_interval_s: float = 5.0
    # quality audit after the run (`semtok audit`): off unless a sample size or fraction is given
    audit_sample: int | None = None
    audit_fraction: float | None = None
    audit_seed: int = 0
    audit_steps: int | None = None  # DDIM steps (default: the audit's, 50)
    audit_domain: str | None = None  # domain of items whose metadata names none (default: sound)

    def __post_init__(self) -> None:
        self.formats = tuple(self.formats)
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: {why}")

        if self.input_kind not in INPUT_KINDS:
            raise bad("input_kind", f"must be one of {INPUT_KINDS}")
        if not self.formats or any(f not in FORMATS for f in self.formats):
            raise bad("formats", f"must be a non-empty subset of {FORMATS}")
        if self.channel_policy not in ("first", "mean"):
            raise bad("channel_policy", "must be 'first' (official) or 'mean'")
        if self.device not in DEVICES:
            raise bad("device", f"must be one of {DEVICES}")
        if self.files_per_unit < 1:
            raise bad("files_per_unit", "must be >= 1")
        if self.num_encoders is not None and self.num_encoders < 1:
            raise bad("num_encoders", "must be >= 1")
        if self.gpus_per_encoder <= 0:
            raise bad("gpus_per_encoder", "must be > 0")
        if self.read_cpus <= 0:
            raise bad("read_cpus", "must be > 0")
        if self.cpus_per_encoder is not None and self.cpus_per_encoder <= 0:
            raise bad("cpus_per_encoder", "must be > 0")
        if self.encode_batch_segments is not None and self.encode_batch_segments < 1:
            raise bad("encode_batch_segments", "must be >= 1")
        if self.max_error_fraction is not None and not 0 <= self.max_error_fraction <= 1:
            raise bad("max_error_fraction", "must be between 0 and 1")
        if self.audit_sample is not None and self.audit_fraction is not None:
            raise bad("audit_fraction", "give audit_sample or audit_fraction, not both")
        if self.audit_sample is not None and self.audit_sample < 1:
            raise bad("audit_sample", "must be >= 1")
        if self.audit_fraction is not None and not 0 < self.audit_fraction <= 1:
            raise bad("audit_fraction", "must be in (0, 1]")
        if self.audit_domain is not None and self.audit_domain not in ("speech", "music", "sound"):
            raise bad("audit_domain", "must be speech, music or sound")
        if self.audit_steps is not None and self.audit_steps < 1:
            raise bad("audit_steps", "must be >= 1")
        if self.codec_size == "tiny" and not (self.weights or "").startswith("random:"):
            raise bad("weights", "the tiny codec has random weights only: use --weights random:SEED")

    @property
    def audit_requested(self) -> bool:
        return self.audit_sample is not None or self.audit_fraction is not None

    def codec_spec(self) -> CodecSpec:
        return CodecSpec(self.codec, {
            "token_rate": self.token_rate, "semantic_vocab_size": self.semantic_vocab_size,
            "weights": self.weights, "size": self.codec_size, "dtype": self.dtype,
        })

    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["formats"] = list(self.formats)
        if redact:
            from pipeline.storage import redact_options

            data["storage_options"] = redact_options(self.storage_options)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizeConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | None = None, **overrides: Any) -> TokenizeConfig:
        """Fields from a YAML file (optional), then `overrides` (None values are ignored)."""
        data: dict[str, Any] = {}
        if path:
            import fsspec
            import yaml

            with fsspec.open(path, "r") as handle:
                loaded = yaml.safe_load(handle) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: expected a mapping of config fields")
            data.update(loaded)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

