"""Partitioned ingest and ranged reads against an S3-compatible server over HTTP (moto)."""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_etl_partitions import OPTIONS, assert_same_dataset, mixed_corpus, run_partitioned

from aistack.etl import parquet_io
from aistack.etl import storage as storage_mod
from aistack.etl.errors import StorageError
from aistack.etl.job import run_etl
from aistack.etl.parquet_io import chunk_row_groups, iter_row_groups, read_manifest, read_table
from aistack.etl.partitions import Partition, plan_partitions, run_etl_partition
from aistack.etl.ranged import MIN_READ_AHEAD, RangedReader


class Requests:
    """Every S3 call the process's client makes: operation, key, and body bytes received."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[tuple[str, str, int]] = []

    def _before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["counted_key"] = params.get("Key", "")

    def _after(self, model: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        size = int(parsed.get("ContentLength", 0)) if model.name == "GetObject" else 0
        self.calls.append((model.name, context.get("counted_key", ""), size))

    def __enter__(self) -> Requests:
        self.client.meta.events.register("before-parameter-build.s3", self._before)
        self.client.meta.events.register("after-call.s3", self._after)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.meta.events.unregister("before-parameter-build.s3", self._before)
        self.client.meta.events.unregister("after-call.s3", self._after)

    def operations(self) -> Counter[str]:
        return Counter(op for op, _, _ in self.calls)

    def bytes_of(self, key_suffix: str) -> int:
        return sum(size for op, key, size in self.calls if op == "GetObject" and key.endswith(key_suffix))


@pytest.fixture
def requests(s3: Any) -> Iterator[Requests]:
    with Requests(storage_mod.s3_client()) as counter:
        yield counter


def _upload(s3: Any, directory: Path, prefix: str) -> None:
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            s3.put_object(
                Bucket=s3.bucket, Key=f"{prefix}/{path.relative_to(directory)}", Body=path.read_bytes()
            )


def test_planning_reads_no_object_body(s3: Any, requests: Requests) -> None:
    rnd = random.Random(5)
    for i in range(1200):
        body = json.dumps({"text": "z" * rnd.randrange(10, 3000)}).encode() + b"\n"
        s3.put_object(Bucket=s3.bucket, Key=f"corpus/d{i:04d}.{'jsonl' if i % 3 else 'txt'}", Body=body * 3)
    s3.put_object(Bucket=s3.bucket, Key="corpus/zbig.jsonl", Body=b'{"text": "line"}\n' * 200_000)
    requests.calls.clear()
    plan = plan_partitions(f"s3://{s3.bucket}/corpus", 8, target_bytes=100_000)
    assert len(plan) == 8
    assert requests.operations() == Counter({"ListObjectsV2": 2}), "one listing of 1,201 objects, no body"
    assert any(i.byte_range for p in plan for i in p.items if i.key == "zbig.jsonl")


def test_planning_a_parquet_object_reads_only_its_footer(s3: Any, requests: Requests) -> None:
    rnd = random.Random(2)
    texts = ["".join(rnd.choice("abcdefgh ") for _ in range(200)) for _ in range(20_000)]
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf, row_group_size=1000)
    size = len(buf.getvalue())
    s3.put_object(Bucket=s3.bucket, Key="pq/rows.parquet", Body=buf.getvalue())
    requests.calls.clear()
    plan = plan_partitions(f"s3://{s3.bucket}/pq", 4, target_bytes=size // 8)
    assert len(plan) == 4 and [g for p in plan for i in p.items for g in i.row_groups or ()] == list(
        range(20)
    )
    fetched = requests.bytes_of("rows.parquet")
    assert set(requests.operations()) == {"ListObjectsV2", "GetObject"}
    assert 0 < fetched <= 128 * 1024 < size // 4, (fetched, size)


def test_partitioned_run_on_s3_equals_one_run(s3: Any, tmp_path: Path, requests: Requests) -> None:
    src = mixed_corpus(tmp_path)
    _upload(s3, src, "in")
    source = f"s3://{s3.bucket}/in"
    plan = plan_partitions(source, 4, target_bytes=50_000)
    assert len(plan) == 4
    merged = f"s3://{s3.bucket}/run/etl"
    run_partitioned(source, merged, plan)
    run_etl(source, f"s3://{s3.bucket}/ref", OPTIONS)
    assert_same_dataset(merged, f"s3://{s3.bucket}/ref")
    rejected = read_table(merged, "rejected", ["source", "reason"]).to_pylist()
    assert {"source": f"{source}/image.png", "reason": "unsupported_format"} in rejected


def test_a_byte_range_on_s3_reads_about_its_range(s3: Any, tmp_path: Path, requests: Requests) -> None:
    line = json.dumps({"text": "word " * 60}).encode() + b"\n"
    body = line * 20_000  # about 6 MB
    s3.put_object(Bucket=s3.bucket, Key="big/lines.jsonl", Body=body)
    plan = plan_partitions(f"s3://{s3.bucket}/big", 4, target_bytes=1_000_000)
    assert len(plan) == 4
    second = plan[1]
    [item] = second.items
    start, end = item.byte_range or (0, 0)
    requests.calls.clear()
    summary = run_etl_partition(second, (tmp_path / "o").as_uri(), OPTIONS)
    fetched = requests.bytes_of("lines.jsonl")
    stop = end or len(body)
    first_line = -(-start // len(line)) * len(line)  # the first line that starts in the range
    assert summary.documents == len(range(first_line, stop, len(line))) > 0
    # the range, the line that crosses its end, and the 4-byte look at the file's start
    assert stop - start <= fetched <= stop - start + 3 * MIN_READ_AHEAD, (fetched, stop - start)
    assert fetched < len(body) / 2


def test_one_row_group_of_a_dataset_on_s3_is_a_small_read(
    s3: Any, tmp_path: Path, requests: Requests, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(parquet_io.TABLE_ROW_GROUP_BYTES, "chunks", 128 * 1024)
    rnd = random.Random(4)
    words = [f"w{i}" for i in range(5000)]
    src = tmp_path / "src"
    src.mkdir()
    (src / "doc.txt").write_text("\n\n".join(" ".join(rnd.choices(words, k=80)) + "." for _ in range(6000)))
    out = f"s3://{s3.bucket}/ds"
    run_etl(str(src), out, OPTIONS)
    groups = chunk_row_groups(out)
    assert len(groups) >= 10
    key, index, rows = groups[len(groups) // 2]
    size = s3.head_object(Bucket=s3.bucket, Key=f"ds/{key}")["ContentLength"]
    requests.calls.clear()
    batches = list(iter_row_groups(out, "chunks", [(key, index)], ["chunk_id", "text"]))
    assert sum(b.num_rows for b in batches) == rows
    fetched = requests.bytes_of(key)
    assert 0 < fetched < size / 4, (fetched, size)
    assert requests.operations()["GetObject"] <= 6
    expected = read_table(out, "chunks", ["chunk_id"])["chunk_id"].to_pylist()
    before = sum(r for k, g, r in groups[: len(groups) // 2])
    assert [c for b in batches for c in b.column(0).to_pylist()] == expected[before : before + rows]
    manifest = read_manifest(out)
    assert manifest["tables"]["chunks"]["rows"] == sum(r for _, _, r in groups)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.integers(min_value=0, max_value=300_000),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["seek", "read", "readline", "seek_end", "prefetch", "limit"]),
            st.integers(-1, 200_000),
        ),
        max_size=12,
    ),
)
def test_ranged_reader_behaves_as_a_file(s3: Any, size: int, ops: list[tuple[str, int]]) -> None:
    rnd = random.Random(size)
    data = bytes(rnd.choice(b"ab\n") for _ in range(size))
    s3.put_object(Bucket=s3.bucket, Key="r/obj", Body=data)
    reader = RangedReader(storage_mod.s3_client(), s3.bucket, "r/obj", f"s3://{s3.bucket}/r/obj", size)
    local = io.BytesIO(data)
    for op, n in ops:
        if op == "seek":
            assert reader.seek(abs(n)) == local.seek(abs(n))
        elif op == "seek_end":
            assert reader.seek(-min(abs(n), size), io.SEEK_END) == local.seek(-min(abs(n), size), io.SEEK_END)
        elif op == "prefetch":  # a hint: what the reads return does not change
            reader.prefetch(abs(n), abs(n) + 70_000)
        elif op == "limit":
            reader.limit_read_ahead(None if n < 0 else n)
        elif op == "read":
            assert reader.read(n) == local.read(n)
        else:
            assert reader.readline(n) == local.readline(n)
        assert reader.tell() == local.tell()


def test_an_object_that_changes_is_an_error_never_a_mix(s3: Any) -> None:
    s3.put_object(Bucket=s3.bucket, Key="c/obj", Body=b"a" * 500_000)
    uri = f"s3://{s3.bucket}/c/obj"
    reader = RangedReader(storage_mod.s3_client(), s3.bucket, "c/obj", uri, 500_000)
    assert reader.read(10) == b"a" * 10
    s3.put_object(Bucket=s3.bucket, Key="c/obj", Body=b"b" * 500_000)
    reader.seek(400_000)
    with pytest.raises(StorageError, match=rf"{uri} changed while it was read"):
        reader.read(10)
    stale = RangedReader(storage_mod.s3_client(), s3.bucket, "c/obj", uri, 400_000)
    with pytest.raises(StorageError, match=rf"{uri} changed since it was listed: 500000 bytes"):
        stale.read(1)


def test_a_body_cut_off_mid_stream_is_fetched_again(s3: Any) -> None:
    from botocore.exceptions import IncompleteReadError

    s3.put_object(Bucket=s3.bucket, Key="f/obj", Body=b"0123456789" * 10_000)
    client = storage_mod.s3_client()
    cut = []

    class CutBody:
        def read(self) -> bytes:
            raise IncompleteReadError(actual_bytes=10, expected_bytes=65536)

    def cut_first(parsed: dict[str, Any], **_: Any) -> None:
        if not cut:
            cut.append(parsed["Body"])
            parsed["Body"] = CutBody()

    client.meta.events.register("after-call.s3.GetObject", cut_first)
    try:
        reader = RangedReader(client, s3.bucket, "f/obj", f"s3://{s3.bucket}/f/obj", 100_000)
        assert reader.read(20) == b"01234567890123456789"
        assert cut and reader.requests == 2
    finally:
        client.meta.events.unregister("after-call.s3.GetObject", cut_first)


def test_a_long_line_across_a_range_end_is_read_in_few_requests(
    s3: Any, tmp_path: Path, requests: Requests
) -> None:
    short = json.dumps({"text": "short line"}).encode() + b"\n"
    long = json.dumps({"text": "long " * 800_000}).encode() + b"\n"  # 4 MB
    body = short * 1000 + long + short * 1000
    s3.put_object(Bucket=s3.bucket, Key="long/lines.jsonl", Body=body)
    source = f"s3://{s3.bucket}/long"
    [whole] = plan_partitions(source, 1)
    item = whole.items[0]
    cut = len(short) * 1000 + 100  # inside the long line: the first range reads it to its end
    first = Partition(0, whole.root, (replace(item, byte_range=(0, cut), bytes=cut),))
    second = Partition(1, whole.root, (replace(item, byte_range=(cut, None), bytes=len(body) - cut),))
    requests.calls.clear()
    a = run_etl_partition(first, (tmp_path / "a").as_uri(), OPTIONS)
    gets_first, bytes_first = requests.operations()["GetObject"], requests.bytes_of("lines.jsonl")
    b = run_etl_partition(second, (tmp_path / "b").as_uri(), OPTIONS)
    assert (a.documents, b.documents) == (1001, 1000)
    assert gets_first <= 12, gets_first
    assert bytes_first <= cut + 2 * len(long), (bytes_first, cut + len(long))
