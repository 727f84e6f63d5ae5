"""Running on Ray: cluster setup, signals, Prometheus telemetry."""
