"""Connecting to Ray (or starting a local one on loopback) and what workers need to reach storage."""

from __future__ import annotations

import os
from typing import Any

from pipeline.io.storage import (
    protocol_of,
    s3_options_from_env,
)
from pipeline.runtime.interrupt import reinstall_handlers


def init_ray(address: str | None) -> None:
    """Connect to `address` (or RAY_ADDRESS); without one, start a local Ray on loopback."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=True,
            runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("SEMTOK_")}},
        )
    reinstall_handlers()  # ray.init replaces SIGTERM's handler: a stop must still be recorded


def worker_storage_options(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """Storage options resolved on the driver (AWS env vars included), for workers whose
    environment may not carry the driver's credentials. Travels as a task argument, never logged."""
    return s3_options_from_env(options) if protocol_of(url) in ("s3", "s3a") else dict(options)
