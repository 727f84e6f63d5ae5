"""storage.py against a real S3 server: env-var routing, option precedence, redaction, retries."""

from __future__ import annotations

import datetime as dt
import errno
import uuid

import pytest
import s3fs

from pipeline.io.storage import (
    current_stamp,
    full_uri,
    is_transient,
    join_url,
    open_filesystem,
    redact_options,
    redact_text,
    redact_uri,
    redact_value,
    s3_options_from_env,
    source_stamp,
    with_retries,
)


def test_server_enforces_credentials(s3_server, s3_bucket):
    good = s3_server.filesystem()
    path = f"{s3_bucket.removeprefix('s3://')}/secret.txt"
    good.pipe_file(path, b"hello")
    assert good.cat_file(path) == b"hello"
    bad = s3fs.S3FileSystem(
        key=s3_server.key,
        secret="wrong-secret",
        endpoint_url=s3_server.endpoint_url,
        skip_instance_cache=True,
    )
    with pytest.raises(PermissionError):
        bad.cat_file(path)


def test_aws_env_vars_route_s3_to_server(s3_server, s3_bucket, aws_env):
    s3_server.filesystem().pipe_file(f"{s3_bucket[5:]}/a/b.bin", b"payload")
    fs, path = open_filesystem(f"{s3_bucket}/a/b.bin")
    assert isinstance(fs, s3fs.S3FileSystem)
    assert path == f"{s3_bucket[5:]}/a/b.bin"
    assert fs.cat_file(path) == b"payload"
    assert full_uri(fs, path) == f"{s3_bucket}/a/b.bin"


def test_explicit_options_win_over_env(s3_server, s3_bucket, monkeypatch):
    s3_server.filesystem().pipe_file(f"{s3_bucket[5:]}/x.bin", b"x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    fs, path = open_filesystem(f"{s3_bucket}/x.bin", s3_server.storage_options)
    assert fs.cat_file(path) == b"x"


def test_s3_options_from_env_mapping(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env-endpoint:1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SK")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    opts = s3_options_from_env({})
    assert opts["endpoint_url"] == "http://env-endpoint:1"
    assert (opts["key"], opts["secret"]) == ("AK", "SK")
    assert opts["client_kwargs"]["region_name"] == "eu-west-3"
    explicit = s3_options_from_env(
        {"client_kwargs": {"endpoint_url": "http://explicit:2"}, "key": "k", "secret": "s"}
    )
    assert "endpoint_url" not in explicit
    assert (explicit["key"], explicit["secret"]) == ("k", "s")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:3")
    assert s3_options_from_env({})["endpoint_url"] == "http://s3-specific:3"


def test_redact_options_hides_secrets():
    opts = {
        "key": "AKIAXXXX",
        "secret": "very-secret",
        "token": "tok",
        "endpoint_url": "http://h:1",
        "client_kwargs": {"aws_secret_access_key": "nested", "region_name": "r"},
    }
    red = redact_options(opts)
    text = repr(red)
    for secret in ("AKIAXXXX", "very-secret", "tok'", "nested"):
        assert secret not in text
    assert red["endpoint_url"] == "http://h:1"
    assert red["client_kwargs"]["region_name"] == "r"
    assert opts["secret"] == "very-secret"  # input untouched


def test_join_url_keeps_protocol():
    assert join_url("s3://bucket/a", "b", "c.wav") == "s3://bucket/a/b/c.wav"
    assert join_url("s3://bucket/a/", "/b/") == "s3://bucket/a/b"
    assert join_url("/tmp/x", "y") == "/tmp/x/y"
    assert join_url("file:///tmp/x", "y z.wav") == "file:///tmp/x/y z.wav"


def test_local_full_uri_roundtrip(tmp_path):
    (tmp_path / "héllo.wav").write_bytes(b"abc")
    fs, path = open_filesystem(str(tmp_path / "héllo.wav"))
    uri = full_uri(fs, path)
    assert uri.startswith("file://")
    fs2, path2 = open_filesystem(uri)
    assert fs2.cat_file(path2) == b"abc"


class _Flaky:
    def __init__(self, failures: list[BaseException]):
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


def test_with_retries_retries_transient_then_succeeds():
    fn = _Flaky(
        [
            ConnectionError("reset"),
            OSError(errno.EBUSY, "SlowDown: please reduce your request rate"),
            OSError("503 Service Unavailable"),
        ]
    )
    delays: list[float] = []
    assert with_retries(fn, attempts=5, base_delay=0.1, sleep=delays.append) == "done"
    assert fn.calls == 4
    assert len(delays) == 3
    assert all(0 < d <= 0.1 * 2**i for i, d in enumerate(delays))  # backoff with jitter


@pytest.mark.parametrize(
    "exc",
    [
        FileNotFoundError("nope"),
        PermissionError("denied"),
        OSError(errno.EINVAL, "InvalidBucketName"),
        ValueError("bad row 500"),
    ],
)
def test_with_retries_does_not_retry_permanent_errors(exc):
    fn = _Flaky([exc])
    with pytest.raises(type(exc)):
        with_retries(fn, attempts=5, sleep=lambda d: None)
    assert fn.calls == 1


def test_with_retries_gives_up_after_attempts():
    fn = _Flaky([TimeoutError("t")] * 10)
    with pytest.raises(TimeoutError):
        with_retries(fn, attempts=3, sleep=lambda d: None)
    assert fn.calls == 3


def test_is_transient_classifies_botocore_errors():
    from botocore.exceptions import EndpointConnectionError

    assert is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert not is_transient(FileNotFoundError("x"))


def test_missing_object_is_not_retried_on_real_s3(s3_server, s3_bucket):
    fs, path = open_filesystem(f"{s3_bucket}/missing-{uuid.uuid4().hex}", s3_server.storage_options)
    calls = []

    def read() -> bytes:
        calls.append(1)
        return fs.cat_file(path)

    with pytest.raises(FileNotFoundError):
        with_retries(read, sleep=lambda d: None)
    assert len(calls) == 1


def test_server_restart_keeps_data_and_outage_is_transient(s3_server, s3_bucket):
    path = f"{s3_bucket[5:]}/persist.bin"
    s3_server.filesystem().pipe_file(path, b"survives")
    s3_server.stop()
    try:
        down = s3fs.S3FileSystem(
            skip_instance_cache=True,
            config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2},
            **s3_server.storage_options,
        )
        with pytest.raises(Exception) as info:  # noqa: B017 - the type is what we classify
            with_retries(lambda: down.cat_file(path), attempts=2, sleep=lambda d: None)
        assert is_transient(info.value), repr(info.value)
    finally:
        s3_server.start()
    assert s3_server.filesystem().cat_file(path) == b"survives"


# --- redaction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://AKIA:SECRET@bucket/x.wav", "s3://***@bucket/x.wav"),
        ("s3://AKIA:ab/cd+ef@bucket/x.wav", "s3://***@bucket/x.wav"),  # AWS secrets hold "/"
        ("https://user@h/x.wav", "https://***@h/x.wav"),
        (
            "https://h/x.wav?X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=abc&X-Amz-Expires=60#t",
            "https://h/x.wav?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60#t",
        ),
        (
            "https://h/x?X-Amz-Security-Token=t&Signature=s&sig=g&token=k&access_token=a"
            "&AWSAccessKeyId=id&key=v&secret=s2&password=p&sv=2024",
            "https://h/x?X-Amz-Security-Token=***&Signature=***&sig=***&token=***&access_token=***"
            "&AWSAccessKeyId=***&key=***&secret=***&password=***&sv=2024",
        ),
    ],
)
def test_redact_uri_removes_credentials(uri, expected):
    assert redact_uri(uri) == expected
    assert redact_uri(expected) == expected  # safe to repeat


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/dir/file.wav",
        "s3://bucket/a@b.wav",
        "http://host:9000/files/user@example.wav",
        "file:///data/a b/ü.wav",
        "/local/path/x.wav",
        "relative/x.wav?key=1",  # not a URI: left alone
        "gs://b/x.wav?generation=3",
        "",
    ],
)
def test_redact_uri_leaves_plain_uris_identical(uri):
    assert redact_uri(uri) == uri


def test_redact_text_finds_uris_and_parameters_in_free_text():
    text = (
        "decode failed for s3://K:S3CR3T@b/x.wav (HTTP 403: https://h/y?X-Amz-Signature=zzz&a=1); "
        "botocore said X-Amz-Credential=AKIA/2026 token_rate=50"
    )
    out = redact_text(text)
    assert "S3CR3T" not in out and "zzz" not in out and "AKIA" not in out
    assert "s3://***@b/x.wav" in out and "a=1" in out and "token_rate=50" in out
    plain = "no header in clip.wav (size=12)"
    assert redact_text(plain) == plain


def test_redact_value_is_recursive_and_keeps_numbers():
    record = {
        "config": {
            "input": "s3://K:S@b/in",
            "storage_options": {"key": "K", "secret": "S", "client_kwargs": {"aws_session_token": "T"}},
            "token_rate": 50,
        },
        "uris": ["https://h/x?sig=abc", "s3://b/plain"],
        "n": 3,
    }
    out = redact_value(record)
    assert out == {
        "config": {
            "input": "s3://***@b/in",
            "storage_options": {"key": "***", "secret": "***", "client_kwargs": {"aws_session_token": "***"}},
            "token_rate": 50,
        },
        "uris": ["https://h/x?sig=***", "s3://b/plain"],
        "n": 3,
    }


# --- source stamps ------------------------------------------------------------------------------


def test_source_stamp_forms():
    assert source_stamp({"size": 10, "ETag": '"abc"', "LastModified": 5}) == "size:10;etag:abc"
    assert source_stamp({"size": 10, "mtime": 1796059587.3274446}) == "size:10;mtime:1796059587.3274446"
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    assert source_stamp({"size": 10, "LastModified": when}) == f"size:10;mtime:{when.timestamp()}"


def test_current_stamp_sees_changes_locally(tmp_path):
    import fsspec

    fs = fsspec.filesystem("file")
    path = tmp_path / "x.wav"
    path.write_bytes(b"one")
    first = current_stamp(fs, str(path))
    assert first.startswith("size:3;mtime:")
    assert current_stamp(fs, str(path)) == first
    path.write_bytes(b"longer")
    assert current_stamp(fs, str(path)).startswith("size:6;")
    path.unlink()
    with pytest.raises(FileNotFoundError):
        current_stamp(fs, str(path))


def test_current_stamp_on_s3_uses_the_etag(s3_server, s3_bucket):
    fs = s3_server.filesystem()
    path = f"{s3_bucket[5:]}/x.wav"
    fs.pipe_file(path, b"one")
    listed = fs.ls(s3_bucket[5:], detail=True)[0]
    first = current_stamp(fs, path)
    assert first.startswith("size:3;etag:") and source_stamp(listed) == first
    fs.pipe_file(path, b"two")  # same size, new content
    assert current_stamp(fs, path) != first
