"""ETL against an S3-compatible server over HTTP (moto's server mode), including failures."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from conftest import free_port
from moto.server import ThreadedMotoServer

from aistack.etl import storage as storage_mod
from aistack.etl.errors import StorageError
from aistack.etl.job import run_etl
from aistack.etl.parquet_io import MANIFEST, read_manifest, read_table


def _corpus(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"doc{i}.txt").write_text(f"Document {i}. " + "Some words here. " * 300)
    return src


def _keys(s3, bucket: str, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_etl_to_s3_and_back(s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket = s3.bucket
    out = f"s3://{bucket}/runs/r1"
    summary = run_etl(str(_corpus(tmp_path)), out)
    assert summary.documents == 3 and summary.output == out
    keys = _keys(s3, bucket, "runs/r1/")
    assert f"runs/r1/{MANIFEST}" in keys
    assert {k.split("/")[2] for k in keys} == {"chunks", "documents", "rejected", MANIFEST}
    chunks = read_table(out, "chunks")
    assert chunks.num_rows == summary.chunks and sum(chunks["token_count"].to_pylist()) == summary.tokens
    # an S3 prefix is also a source: chunk the published Parquet documents again
    again = run_etl(f"s3://{bucket}/runs/r1/documents", f"s3://{bucket}/runs/r2")
    assert again.documents == 3


def test_s3_errors_name_the_uri(s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-x/out/"):
        run_etl(str(_corpus(tmp_path)), "s3://no-such-bucket-x/out")


def test_failure_mid_upload_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    storage_mod.s3_client.cache_clear()
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="flaky")
    out = "s3://flaky/out"
    src = _corpus(tmp_path)
    try:
        run_etl(str(src), out)
        published = read_manifest(out)

        original = storage_mod.S3Storage.writer
        uploads = []

        @contextlib.contextmanager
        def writer_then_outage(self, key):  # type: ignore[no-untyped-def]
            with original(self, key) as fh:
                yield fh
            uploads.append(key)
            if len(uploads) == 1:
                server.stop()  # the store goes away after the first part landed

        monkeypatch.setattr(storage_mod.S3Storage, "writer", writer_then_outage)
        with pytest.raises(StorageError, match=r"cannot upload s3://flaky/out/chunks/part-"):
            run_etl(str(src), out)
        assert len(uploads) == 1
    finally:
        server.stop()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        storage_mod.s3_client.cache_clear()
        assert read_manifest(out) == published, "the previous dataset is still the published one"
        assert read_table(out, "documents").num_rows == 3
    finally:
        server.stop()
        storage_mod.s3_client.cache_clear()
