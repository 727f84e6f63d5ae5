"""Prometheus metrics of a tokenize job, through Ray's metrics API (names: telemetry_names.py).

The driver counts what it commits (audio seconds, items done and failed by reason, units); each
encode actor reports its batch time, batch fill ratio and that it is alive. Ray's metrics agent on
every node exports them; infra/grafana/semtok-dashboard.json draws them. Metrics never break a job:
if Ray's metrics API is unavailable, these are no-ops.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.runtime import telemetry_names as names

log = logging.getLogger(__name__)
DATASET_TAG = "dataset"


def _ray_metrics() -> Any | None:
    try:
        from ray.util import metrics
    except ImportError:  # pragma: no cover - ray is a dependency
        return None
    return metrics


class JobMetrics:
    """Driver-side counters, tagged with the dataset version being written."""

    def __init__(self, dataset: str) -> None:
        self.tags = {DATASET_TAG: dataset}
        metrics = _ray_metrics()
        self.enabled = metrics is not None
        if metrics is None:
            return
        keys = (DATASET_TAG,)
        self.audio = metrics.Counter(
            names.AUDIO_SECONDS_ENCODED_RAY, "Seconds of audio tokenized", tag_keys=keys
        )
        self.done = metrics.Counter(names.ITEMS_DONE_RAY, "Items tokenized", tag_keys=keys)
        self.failed = metrics.Counter(
            names.ITEMS_FAILED_RAY, "Items that failed, by reason", tag_keys=(*keys, names.FAILED_REASON_TAG)
        )
        self.units = metrics.Counter(names.UNITS_COMMITTED_RAY, "Input units committed", tag_keys=keys)

    def unit_finished(self, audio_seconds: float, items_ok: int, errors_by_reason: dict[str, int]) -> None:
        if not self.enabled:
            return
        if audio_seconds > 0:
            self.audio.inc(audio_seconds, tags=self.tags)
        if items_ok:
            self.done.inc(items_ok, tags=self.tags)
        for reason, count in errors_by_reason.items():
            self.failed.inc(count, tags={**self.tags, names.FAILED_REASON_TAG: reason})

    def unit_committed(self) -> None:
        if self.enabled:
            self.units.inc(1, tags=self.tags)


class EncodeMetrics:
    """Per-actor batch metrics; the actor gauge is 1 per live actor (sum over actors = pool size)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = max(1, batch_size)
        metrics = _ray_metrics()
        self.enabled = metrics is not None
        if metrics is None:
            return
        import ray

        try:
            actor = ray.get_runtime_context().get_actor_id() or "driver"
        except Exception:  # noqa: BLE001 - outside Ray (unit tests call the actor class directly)
            actor = "local"
        self.tags = {"actor": actor}
        self.seconds = metrics.Histogram(
            names.ENCODE_BATCH_SECONDS_RAY,
            "Encode batch wall time (s)",
            boundaries=list(names.ENCODE_BATCH_SECONDS_BOUNDARIES),
            tag_keys=("actor",),
        )
        self.fill = metrics.Gauge(
            names.ENCODE_BATCH_FILL_RATIO_RAY, "Segments in the last batch / batch size", tag_keys=("actor",)
        )
        self.actors = metrics.Gauge(names.ENCODE_ACTORS_RAY, "Live encode actors", tag_keys=("actor",))
        self.actors.set(1, tags=self.tags)

    def batch(self, seconds: float, segments: int) -> None:
        if not self.enabled:
            return
        self.seconds.observe(seconds, tags=self.tags)
        self.fill.set(min(1.0, segments / self.batch_size), tags=self.tags)
