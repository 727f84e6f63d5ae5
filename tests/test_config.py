"""TokenizeConfig/AuditConfig: typed (pydantic v2), one-line errors, the shipped JSON Schema."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline import config as config_module
from pipeline.audit.job import AuditConfig
from pipeline.config import ConfigError, TokenizeConfig, tokenize_config_schema
from tests.helpers import REPO
from tests.helpers import TINY_CODEC as TINY

SCHEMA_FILE = REPO / "pipeline" / "schemas" / "tokenize-config.schema.json"


def job_config() -> dict:
    config_map = yaml.safe_load((REPO / "infra" / "kuberay" / "job-config.yaml").read_text())
    return yaml.safe_load(config_map["data"]["job.yaml"])


def test_shipped_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text() == config_module.shipped_schema_text(), (
        "regenerate: python -m pipeline.config > pipeline/schemas/tokenize-config.schema.json"
    )
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema == tokenize_config_schema()
    assert set(schema["properties"]) == set(TokenizeConfig.field_names())
    assert schema["additionalProperties"] is False


def test_kuberay_job_config_validates_against_the_schema() -> None:
    validator = jsonschema.Draft202012Validator(tokenize_config_schema())
    validator.check_schema(tokenize_config_schema())
    data = job_config()
    assert not [e.message for e in validator.iter_errors(data)]
    TokenizeConfig.from_dict(data)
    for broken in (
        {**data, "num_encoder": 4},
        {**data, "device": "tpu"},
        {**data, "files_per_unit": 0},
        {**data, "formats": ["csv"]},
        {**data, "resampler": "linear"},
    ):
        assert list(validator.iter_errors(broken)), broken
        with pytest.raises(ConfigError):
            TokenizeConfig.from_dict(broken)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"files_per_unit": "abc"}, "files_per_unit='abc': must be an integer"),
        ({"files_per_unit": 0}, "files_per_unit=0: must be >= 1"),
        ({"device": "tpu"}, "device='tpu': must be one of auto, cpu, cuda"),
        ({"token_rate": 30}, "token_rate=30: must be one of 25, 50, 100"),
        ({"formats": ["parquet", "csv"]}, "formats=['parquet', 'csv']: must be one of parquet, webdataset"),
        ({"formats": []}, "formats=[]: must be a non-empty list"),
        ({"resampler": "linear"}, "resampler='linear': must be one of official, soxr-hq"),
        ({"read_cpus": -1}, "read_cpus=-1: must be > 0"),
        ({"item_timeout_s": 0}, "item_timeout_s=0: must be > 0"),
        ({"max_item_bytes": 0}, "max_item_bytes=0: must be >= 1"),
        ({"max_decoded_bytes": -5}, "max_decoded_bytes=-5: must be >= 1"),
        ({"max_item_attempts": 0}, "max_item_attempts=0: must be >= 1"),
        ({"follow_links": "maybe"}, "follow_links='maybe': must be true or false"),
        ({"glob": 3}, "glob=3: must be a string (or null)"),
        ({"storage_options": [1]}, "storage_options=[1]: must be a mapping"),
        ({"max_error_fraction": 2}, "max_error_fraction=2: must be <= 1"),
        ({"gpus_per_encoder": float("nan")}, "gpus_per_encoder=nan: must be a finite number"),
        ({"num_encoder": 2}, "unknown config field 'num_encoder'; did you mean num_encoders"),
        ({"audit_sample": 3, "audit_fraction": 0.5}, "give audit_sample or audit_fraction, not both"),
        ({"codec_size": "tiny"}, "the tiny codec has random weights only"),
    ],
)
def test_bad_values_are_one_line_config_errors(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TokenizeConfig(**fields)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(ConfigError):
        TokenizeConfig.from_dict(fields)


def test_dataclass_api_is_kept() -> None:
    config = TokenizeConfig(
        input="in", output="out", formats=["parquet", "webdataset"], allow_manifest_schemes=["s3"], **TINY
    )
    assert config.formats == ("parquet", "webdataset") and config.allow_manifest_schemes == ("s3",)
    assert dataclasses.is_dataclass(config)
    assert dataclasses.asdict(config)["formats"] == ("parquet", "webdataset")
    assert dataclasses.replace(config, token_rate=25).token_rate == 25
    with pytest.raises(ConfigError, match="token_rate"):
        dataclasses.replace(config, token_rate=7)
    assert TokenizeConfig.from_dict(config.to_dict(redact=False)) == config
    assert config.to_dict()["formats"] == ["parquet", "webdataset"]
    assert TokenizeConfig(gpus_per_encoder=2).gpus_per_encoder == 2.0  # YAML int for a float field
    assert not config.audit_requested and TokenizeConfig(audit_sample=3).audit_requested
    assert config.codec_spec().options["size"] == "tiny"
    defaults = TokenizeConfig()
    assert (defaults.resampler, defaults.id_prefix, defaults.follow_links) == ("official", None, False)
    assert (
        defaults.item_timeout_s,
        defaults.max_item_bytes,
        defaults.max_decoded_bytes,
        defaults.max_item_attempts,
    ) == (300.0, 4 * 2**30, 2 * 2**30, 3)


def test_choices_come_from_the_types() -> None:
    assert TokenizeConfig.choices("resampler") == typing.get_args(config_module.Resampler)
    assert TokenizeConfig.choices("formats") == ("parquet", "webdataset")
    assert TokenizeConfig.choices("audit_domain") == ("speech", "music", "sound")
    assert TokenizeConfig.choices("token_rate") == (25, 50, 100)
    assert TokenizeConfig.choices("input") == ()


def test_load_reads_yaml_and_refuses_what_is_not_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text("input: a\noutput: b\nfiles_per_unit: 3\n")
    assert TokenizeConfig.load(str(tmp_path / "ok.yaml"), files_per_unit=None).files_per_unit == 3
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        TokenizeConfig.load(str(tmp_path / "list.yaml"))
    with pytest.raises(ConfigError, match="not found"):
        TokenizeConfig.load(str(tmp_path / "missing.yaml"))


def test_audit_config_is_validated() -> None:
    assert AuditConfig(output="o").sample == 20
    cases = [
        ({"output": "o", "sample": 0}, "sample=0: must be >= 1"),
        ({"output": "o", "device": "tpu"}, "device='tpu': must be one of auto, cpu, cuda"),
        ({"output": "o", "default_domain": "noise"}, "default_domain='noise': must be one of"),
        ({"output": "o", "steps": "x"}, "steps='x': must be an integer"),
        ({"output": "o", "worst_k": -1}, "worst_k=-1: must be >= 0"),
        ({"output": "o", "sample": 2, "fraction": 0.5}, "give sample or fraction"),
        ({"output": "o", "decode_batch": 2}, "unknown config field 'decode_batch'"),
        ({}, "output: required"),
    ]
    for fields, message in cases:
        with pytest.raises(ConfigError) as caught:
            AuditConfig(**fields)
        assert message in str(caught.value), (fields, str(caught.value))
