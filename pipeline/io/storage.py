"""fsspec access for every input and output URL (local paths, s3://, gs://, ...).

Why a module of its own: S3-compatible endpoints must be reachable through the standard AWS
environment variables (so `ray job submit` and Kubernetes secrets just work), credentials must
never reach a log line, and transient storage errors must be retried in one consistent way.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import posixpath
import random
import re
import time
import urllib.parse
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


# --- secrets in URIs and text ---------------------------------------------------------------

REDACTED = "***"
# Query parameters whose values are credentials (compared lower-case); any parameter whose name
# ends with one of _SECRET_PARAM_PARTS counts too (x-goog-signature, client_secret, sas_token...).
_SECRET_PARAMS = frozenset(
    {"sig", "key", "awsaccesskeyid", "api_key", "apikey", "auth", "access_key", "secret_key"}
)
_SECRET_PARAM_PARTS = ("signature", "credential", "token", "secret", "password", "passwd")
# Record keys whose string values are credentials whatever they look like.
_SECRET_KEYS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "passwd",
        "access_key",
        "secret_key",
        "session_token",
        "access_token",
        "api_key",
        "apikey",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "client_secret",
        "account_key",
        "sas_token",
        "credentials",
    }
)
_SECRET_KEY_SUFFIXES = ("_secret", "_password", "_token")
_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*://"
# userinfo: "user@" or "user:password@"; a password may hold "/" (AWS secrets do) unless it looks
# like a port ("host:9000/path/a@b" keeps its "@" in the path).
_USERINFO = re.compile(rf"^({_SCHEME})((?:[^/?#@\s:]*:(?![0-9]*(?:/|$))[^?#@\s]*|[^/?#@\s:]*)@)")
# A URI inside free text: scheme, then anything up to white space or a quote/bracket.
_URI_IN_TEXT = re.compile(rf"{_SCHEME}[^\s'\"<>`()\[\]{{}}]+")
# name=value pairs outside URIs (log lines, botocore messages): "X-Amz-Signature=abc".
_PARAM_IN_TEXT = re.compile(r"(?<![A-Za-z0-9_.-])([A-Za-z][A-Za-z0-9_.-]*)=([^&\s'\"<>;,]+)")


def _secret_param(name: str) -> bool:
    lowered = urllib.parse.unquote(name).lower()
    return lowered in _SECRET_PARAMS or lowered.endswith(_SECRET_PARAM_PARTS)


def _redact_query(query: str) -> str:
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, sep, value = part.partition("=")
        if sep and value and _secret_param(name):
            parts[i] = f"{name}={REDACTED}"
    return "&".join(parts)


def redact_uri(uri: str) -> str:
    """A URI safe to write anywhere: userinfo (`user:password@`) becomes `***@` and values of
    credential-like query parameters (X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token,
    Signature, sig, token, access_token, AWSAccessKeyId, key, secret, password, ...) become `***`.

    URIs without either come back unchanged (the same string), so redacting is safe to repeat
    and never changes plain `s3://bucket/key` or local paths."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    out = _USERINFO.sub(rf"\g<1>{REDACTED}@", uri, count=1)
    head, sep, query = out.partition("?")
    if sep:
        query, hash_sep, fragment = query.partition("#")
        out = head + sep + _redact_query(query) + hash_sep + fragment
    return out


def redact_text(text: str) -> str:
    """Free text (error details, log lines) with every URI inside redacted (`redact_uri`) and any
    stray credential parameter (`X-Amz-Signature=...` outside a URI) replaced by `***`."""
    if not isinstance(text, str) or ("://" not in text and "=" not in text):
        return text
    out = _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text) if "://" in text else text

    def param(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if value == REDACTED or not _secret_param(name):
            return match.group(0)
        return f"{name}={REDACTED}"

    return _PARAM_IN_TEXT.sub(param, out) if "=" in out else out


def _secret_key(key: Any) -> bool:
    lowered = str(key).lower()
    return lowered in _SECRET_KEYS or lowered.endswith(_SECRET_KEY_SUFFIXES)


def redact_value(value: Any) -> Any:
    """A JSON-able value with secrets removed, recursively: every string through `redact_text`,
    string values under credential keys (`secret`, `aws_secret_access_key`, `*_token`...) → `***`.
    Numbers, booleans and key names are kept (so `token_rate: 50` stays)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if _secret_key(k) and isinstance(v, str) and v else redact_value(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value


# --- source stamps --------------------------------------------------------------------------


def source_stamp(info: Mapping[str, Any]) -> str:
    """What an input object looked like, from an fsspec `info()` / `ls(detail=True)` entry:
    "size:<n>;etag:<e>" where the store gives an ETag (object stores; GCS md5Hash or generation),
    else "size:<n>;mtime:<t>" (local files: st_mtime as Python prints the float; datetimes as
    their POSIX timestamp). Equal stamps mean the object is (very likely) unchanged. The spelling
    is part of the manifest format: stamps recorded at commit are compared with these verbatim."""
    size = info.get("size")
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("generation")
    if etag:
        return f"size:{size};etag:{str(etag).strip(chr(34))}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") or info.get("created")
    if isinstance(mtime, dt.datetime):
        mtime = mtime.timestamp()
    return f"size:{size};mtime:{mtime}"


def current_stamp(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """`source_stamp` of the object at `path` now (listing caches dropped first); raises
    FileNotFoundError when it is gone."""
    try:
        fs.invalidate_cache(path)
    except Exception:  # noqa: BLE001 - a cache that cannot be dropped is no reason to fail
        pass
    return source_stamp(fs.info(path))
