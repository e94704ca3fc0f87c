"""Remote cache stores for the tests: a real S3 API (moto's server on 127.0.0.1) and a folder."""

from __future__ import annotations

import logging
import uuid

import pytest

# Recognisable fake credentials: tests grep everything a build wrote for them.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKESDBUILDKEY0042",
    "AWS_SECRET_ACCESS_KEY": "fake-sdbuild-secret-do-not-write-0042",
    "AWS_SESSION_TOKEN": "fake-sdbuild-session-token-0042",
}


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on a free loopback port, for the whole run: an S3 API spoken over HTTP."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def fake_aws() -> dict[str, str]:
    return FAKE_AWS


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials in the environment, and no profile files of the machine running the tests."""
    from s3fs import S3FileSystem

    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # botocore's last resort is a network call
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    S3FileSystem.clear_instance_cache()  # s3fs keeps clients built under other settings
    yield
    S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_remote(s3_endpoint, aws_env) -> tuple[str, dict]:
    """A fresh bucket on the moto server: (cache.remote URL, cache.remote_options)."""
    import fsspec

    bucket = f"sdbuild-{uuid.uuid4().hex[:12]}"
    options = {"endpoint_url": s3_endpoint}
    fsspec.filesystem("s3", **options).mkdir(bucket)
    return f"s3://{bucket}/cache", options


@pytest.fixture
def file_remote(tmp_path) -> tuple[str, dict]:
    return f"file://{tmp_path / 'shared-cache'}", {}


@pytest.fixture(params=["s3", "file"])
def remote(request) -> tuple[str, dict]:
    """Each test using it runs against both kinds of store."""
    return request.getfixturevalue(f"{request.param}_remote")


def read_remote(remote: tuple[str, dict]) -> dict[str, str | bytes]:
    """Every object of a remote store: path relative to its root -> bytes."""
    import fsspec

    url, options = remote
    fs, root = fsspec.core.url_to_fs(url, **options)
    return {path[len(root):]: fs.cat_file(path) for path in fs.find(root)}


@pytest.fixture
def remote_objects():
    return read_remote
