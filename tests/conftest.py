"""Shared fixtures: local stand-ins started on 127.0.0.1 and stopped by the tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3-compatible server over real HTTP; boto3 reaches it via AWS_ENDPOINT_URL_S3."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A boto3 client on the local S3 server, with a fresh bucket `test-bucket`."""
    import uuid

    import boto3

    from aistack.etl import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage.s3_client.cache_clear()
    client = boto3.client("s3")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    client.bucket = bucket  # type: ignore[attr-defined]
    yield client
    storage.s3_client.cache_clear()


def pytest_report_header() -> str:
    """Which check validates compiled Argo objects in this run (see tests/argo_schema.py)."""
    from argo_schema import CHECK

    return f"compiled Argo objects are validated with {CHECK}"
