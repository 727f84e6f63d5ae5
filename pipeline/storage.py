"""fsspec access for every input and output URL (local paths, s3://, gs://, ...).

Why a module of its own: S3-compatible endpoints must be reachable through the standard AWS
environment variables (so `ray job submit` and Kubernetes secrets just work), credentials must
never reach a log line, and transient storage errors must be retried in one consistent way.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import fsspec
from fsspec.core import split_protocol, url_to_fs

log = logging.getLogger(__name__)

T = TypeVar("T")

_S3_PROTOCOLS = ("s3", "s3a")
_SECRET_WORDS = ("secret", "password", "token", "key", "credential", "passwd", "auth")


def _has_endpoint(options: Mapping[str, Any]) -> bool:
    ck = options.get("client_kwargs") or {}
    return bool(options.get("endpoint_url") or ck.get("endpoint_url"))


def s3_options_from_env(options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fill s3fs options from the AWS env vars that s3fs/botocore may not read themselves.

    botocore >= 1.31 reads AWS_ENDPOINT_URL, but older pins do not, and s3fs passes its own
    ``endpoint_url`` through, so we map it explicitly. Explicit options always win.
    """
    opts = dict(options or {})
    if not _has_endpoint(opts):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
    if "key" not in opts and "secret" not in opts and not opts.get("anon"):
        key = os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            opts["key"] = key
            opts["secret"] = secret
            token = os.environ.get("AWS_SESSION_TOKEN")
            if token:
                opts["token"] = token
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        ck = dict(opts.get("client_kwargs") or {})
        ck.setdefault("region_name", region)
        opts["client_kwargs"] = ck
    return opts


def open_filesystem(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return (filesystem, path without protocol) for a URL, honouring AWS env vars for S3."""
    protocol, _ = split_protocol(url)
    opts = dict(storage_options or {})
    if protocol in _S3_PROTOCOLS:
        opts = s3_options_from_env(opts)
    fs, path = url_to_fs(url, **opts)
    return fs, path


def redact_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Copy of storage options that is safe to log: secret-looking values become '***'."""
    out: dict[str, Any] = {}
    for k, v in (options or {}).items():
        if isinstance(v, Mapping):
            out[k] = redact_options(v)
        elif any(w in str(k).lower() for w in _SECRET_WORDS) and v not in (None, ""):
            out[k] = "***"
        else:
            out[k] = v
    return out


def protocol_of(url: str) -> str:
    """'s3' for s3://b/k, 'file' for local paths."""
    protocol, _ = split_protocol(url)
    return protocol or "file"


def join_url(base: str, *parts: str) -> str:
    """Join path parts onto a URL, keeping its protocol ('s3://b/x' + 'y' -> 's3://b/x/y')."""
    protocol, path = split_protocol(base)
    cleaned = [p.strip("/") for p in parts if p not in ("", None)]
    joined = posixpath.join(path, *cleaned) if cleaned else path
    return f"{protocol}://{joined}" if protocol else joined


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Put the filesystem's protocol back on a path (local paths become file:// URIs)."""
    return fs.unstrip_protocol(path)


# --- retries --------------------------------------------------------------------------------

_NEVER_RETRY = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
)
_TRANSIENT_MARKERS = (
    "slowdown",
    "slow down",
    "503",
    "500",
    "502",
    "504",
    "serviceunavailable",
    "service unavailable",
    "internalerror",
    "throttl",
    "requesttimeout",
    "connection reset",
    "timed out",
    # the store is down or restarting (seen with SeaweedFS stopped mid-job): worth waiting for
    "connection refused",
    "could not connect",
    "connection aborted",
    "server disconnected",
    "remote end closed",
    "broken pipe",
    "temporarily unavailable",
)
_TRANSIENT_ERRNOS = {
    errno.EBUSY,
    errno.EIO,
    errno.EAGAIN,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EPIPE,
    getattr(errno, "EREMOTEIO", errno.EIO),
}


def _transient_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from botocore import exceptions as bex

        types += [bex.ConnectionError, bex.HTTPClientError]
    except ImportError:  # pragma: no cover - botocore ships with s3fs
        pass
    try:
        import aiohttp

        types += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


_TRANSIENT_TYPES = _transient_types()


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: connection trouble, throttling, 5xx."""
    if isinstance(exc, _NEVER_RETRY):
        return False
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if not isinstance(exc, OSError) and type(exc).__name__ != "ClientError":
        return False  # programming/data errors (ValueError, KeyError, ...) never heal
    message = str(exc).lower()
    if any(m in message for m in _TRANSIENT_MARKERS):
        return True
    if isinstance(exc, OSError):
        # s3fs maps 4xx client errors to EINVAL/EPERM/ENOSYS: retrying cannot help those.
        return exc.errno is None or exc.errno in _TRANSIENT_ERRNOS
    return False


def with_retries(
    fn: Callable[[], T],
    *,
    attempts: int = 5,
    base_delay: float = 0.2,
    max_delay: float = 10.0,
    retry_if: Callable[[BaseException], bool] = is_transient,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call fn(), retrying transient storage errors with exponential backoff and full jitter."""
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt == attempts - 1 or not retry_if(exc):
                raise
            delay = min(max_delay, base_delay * (2**attempt)) * (0.5 + random.random() / 2)
            log.warning(
                "transient storage error (attempt %d/%d), retrying in %.2fs: %s",
                attempt + 1,
                attempts,
                delay,
                type(exc).__name__,
            )
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def read_bytes(url: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """Whole object as bytes, with retries."""
    fs, path = open_filesystem(url, storage_options)
    return with_retries(lambda: fs.cat_file(path))
