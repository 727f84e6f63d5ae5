"""Names of the Prometheus metrics a tokenize job emits (one place for the pipeline and the dashboard).

The pipeline registers each metric with `ray.util.metrics` under its `*_RAY` name (Counter, Gauge or
Histogram, as noted). Ray's metrics agent exports it to Prometheus with the `ray_` prefix, and
counters additionally get the `_total` suffix: those exported names are the plain constants below, and
the Grafana dashboard in `infra/grafana/semtok-dashboard.json` queries only them (a test checks this).
Histograms are queried through Prometheus' `_bucket`, `_sum` and `_count` series.

Constants only: no Ray import, so the dashboard test and tooling can read it anywhere.
"""

from __future__ import annotations

# --- counters -----------------------------------------------------------------------------------
#: Seconds of audio encoded into tokens (rate of this / wall time = "× real time").
AUDIO_SECONDS_ENCODED_RAY = "semtok_audio_seconds_encoded"
AUDIO_SECONDS_ENCODED = "ray_semtok_audio_seconds_encoded_total"

#: Items (audio files or records) tokenized successfully.
ITEMS_DONE_RAY = "semtok_items_done"
ITEMS_DONE = "ray_semtok_items_done_total"

#: Items that failed; tagged with `FAILED_REASON_TAG` (the error row's reason).
ITEMS_FAILED_RAY = "semtok_items_failed"
ITEMS_FAILED = "ray_semtok_items_failed_total"

#: Input units published (data then manifest entry) by the commit stage.
UNITS_COMMITTED_RAY = "semtok_units_committed"
UNITS_COMMITTED = "ray_semtok_units_committed_total"

# --- histogram ----------------------------------------------------------------------------------
#: Wall time of one encode batch on an encode actor, in seconds.
ENCODE_BATCH_SECONDS_RAY = "semtok_encode_batch_seconds"
ENCODE_BATCH_SECONDS = "ray_semtok_encode_batch_seconds"
#: Bucket boundaries (seconds) for ENCODE_BATCH_SECONDS.
ENCODE_BATCH_SECONDS_BOUNDARIES = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)

# --- gauges -------------------------------------------------------------------------------------
#: Segments in the last encode batch / the configured batch size (1.0 = full batches).
ENCODE_BATCH_FILL_RATIO_RAY = "semtok_encode_batch_fill_ratio"
ENCODE_BATCH_FILL_RATIO = "ray_semtok_encode_batch_fill_ratio"

#: Encode actors alive (each actor sets 1 for itself, tagged by its actor id; sum for the pool).
ENCODE_ACTORS_RAY = "semtok_encode_actors"
ENCODE_ACTORS = "ray_semtok_encode_actors"

# --- tags ---------------------------------------------------------------------------------------
FAILED_REASON_TAG = "reason"

# --- groups -------------------------------------------------------------------------------------
COUNTERS = (AUDIO_SECONDS_ENCODED, ITEMS_DONE, ITEMS_FAILED, UNITS_COMMITTED)
HISTOGRAMS = (ENCODE_BATCH_SECONDS,)
GAUGES = (ENCODE_BATCH_FILL_RATIO, ENCODE_ACTORS)
#: Every exported (Prometheus) metric name.
ALL = COUNTERS + HISTOGRAMS + GAUGES
#: Histogram series suffixes Prometheus adds.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
