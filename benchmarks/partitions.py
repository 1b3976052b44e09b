"""Partitioned ingest and slice reads: planning cost, chunks row-group size, a shard's bytes read.

Every number is a ratio against a baseline measured in this process, on the same data:

    python benchmarks/partitions.py [--objects 3000] [--mb 1024] [--shards 8,64] [--repeat 3]

1. Planning on S3 (moto's server on 127.0.0.1): `plan_partitions` over `--objects` objects
   (and one Parquet object that a cut falls inside) against `list_sources` alone: time ratio,
   and the requests each made by operation (planning must read no object body; the Parquet
   object's footer is the only GET).
2. Reading a JSONL object on S3 through ranged GETs (what the loaders now do) against
   downloading it first (what they did): time ratio, same records.
3. Writing the `chunks` table of `--mb` MB of chunk text (made from the bundled docs) with
   2 MB row groups against 8 MB ones (the bound every table had): write-time and size ratios;
   and `run_etl` end to end on `--etl-mb` MB of text with either bound.
4. A map shard's read from S3: both tables published on the S3 server, their row groups cut
   into each of `--shards` contiguous shards by rows, each shard read with `iter_row_groups` (columns
   `chunk_id` and `text`); the bytes GET returned for the largest shard, against its share of
   those columns and of the whole table (target <= 1.2x).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from aistack.etl import parquet_io
from aistack.etl.html_text import html_to_text
from aistack.etl.loaders import LoaderOptions, list_sources, load
from aistack.etl.parquet_io import TableWriter, chunk_row_groups, iter_row_groups
from aistack.etl.partitions import plan_partitions
from aistack.etl.schemas import CHUNKS, content_hash

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "datasets" / "python-docs"
CHUNK_CHARS = 2000  # about 512 tokens of English
SHARD_COLUMNS = ["chunk_id", "text"]


def start_s3() -> Any:
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return server


class Calls:
    """S3 calls by operation, and the body bytes of GETs, through botocore's events."""

    def __init__(self, client: Any) -> None:
        self.ops: Counter[str] = Counter()
        self.get_bytes = 0
        client.meta.events.register("after-call.s3", self._after)

    def _after(self, model: Any, parsed: dict[str, Any], **_: Any) -> None:
        self.ops[model.name] += 1
        if model.name == "GetObject":
            self.get_bytes += int(parsed.get("ContentLength", 0))

    def take(self) -> tuple[Counter[str], int]:
        ops, got = self.ops, self.get_bytes
        self.ops, self.get_bytes = Counter(), 0
        return ops, got


def bundled_text() -> str:
    return "\n\n".join(html_to_text(p.read_text())[0] for p in sorted(DATASET.rglob("*.html")))


def planning_on_s3(objects: int, repeat: int) -> None:
    from aistack.etl.storage import s3_client

    client = s3_client()
    client.create_bucket(Bucket="bench-plan")
    rnd = random.Random(0)
    for i in range(objects):
        ext = ("txt", "jsonl", "md", "html")[i % 4]
        body = (
            b'{"text": "x"}\n' * rnd.randrange(1, 4000)
            if ext == "jsonl"
            else b"x" * rnd.randrange(100, 60_000)
        )
        client.put_object(Bucket="bench-plan", Key=f"corpus/{i // 500:02d}/d{i:05d}.{ext}", Body=body)
    buf = io.BytesIO()
    table = {"text": [os.urandom(64).hex() for _ in range(300_000)]}  # ~20 MB: a cut falls inside
    import pyarrow as pa

    pq.write_table(pa.table(table), buf, row_group_size=10_000)
    client.put_object(Bucket="bench-plan", Key="corpus/zz/rows.parquet", Body=buf.getvalue())
    source = "s3://bench-plan/corpus"
    calls = Calls(client)
    listing, planning = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        sources = list_sources(source)
        listing.append(time.perf_counter() - t)
        list_ops, _ = calls.take()
        t = time.perf_counter()
        plan = plan_partitions(source, 16, target_bytes=1 << 20)
        planning.append(time.perf_counter() - t)
        plan_ops, plan_bytes = calls.take()
    total = sum(s.obj.size for s in sources)
    print(f"1. planning {len(sources):,} S3 objects ({total / 1e6:.0f} MB) into {len(plan)} partitions")
    print(f"   list_sources: {min(listing):.3f} s, requests {dict(list_ops)}")
    print(
        f"   plan_partitions: {min(planning):.3f} s = {min(planning) / min(listing):.2f}x the listing; "
        f"requests {dict(plan_ops)}; body bytes read {plan_bytes:,} "
        f"(the footer of the {len(buf.getvalue()):,}-byte Parquet object a cut falls inside)"
    )
    sizes = [p.bytes for p in plan]
    print(f"   partition sizes: min {min(sizes):,} max {max(sizes):,} ({max(sizes) / min(sizes):.2f}x)")


def jsonl_on_s3(repeat: int) -> None:
    from aistack.etl.storage import s3_client

    client = s3_client()
    client.create_bucket(Bucket="bench-read")
    rnd = random.Random(1)
    words = bundled_text().split()
    lines = [
        json.dumps({"text": " ".join(rnd.choices(words, k=rnd.randrange(20, 400)))}) for _ in range(20_000)
    ]
    body = ("\n".join(lines) + "\n").encode()
    client.put_object(Bucket="bench-read", Key="in/big.jsonl", Body=body)
    [source] = list_sources("s3://bench-read/in/big.jsonl")
    options = LoaderOptions()

    def ranged() -> int:
        return sum(1 for _ in load(source, options))

    def downloaded() -> int:  # what the loader did before: download, then read the local file
        with source.storage.local_copy(source.obj.key) as path:
            return sum(1 for s in list_sources(str(path)) for _ in load(s, options))

    times: dict[str, list[float]] = {"ranged": [], "download": []}
    counts: dict[str, int] = {}
    for _ in range(repeat):
        for name, fn in (("ranged", ranged), ("download", downloaded)):
            t = time.perf_counter()
            n = fn()
            times[name].append(time.perf_counter() - t)
            counts[name] = n
    r, d = min(times["ranged"]), min(times["download"])
    assert counts["ranged"] == counts["download"], counts
    print(f"\n2. a {len(body) / 1e6:.0f} MB JSONL object on S3, {n:,} records (the same either way)")
    print(f"   ranged reads {r:.2f} s, download then read {d:.2f} s: ranged/download = {r / d:.2f}x")

    # a Parquet object of many small row groups and other columns: the worst case for reads
    # of one column's chunks (each a separate range)
    import pyarrow as pa

    table = pa.table({"id": list(range(len(lines))), "text": lines, "extra": [x[::-1] for x in lines]})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=100)
    client.put_object(Bucket="bench-read", Key="in/rows.parquet", Body=buf.getvalue())
    [rows] = list_sources("s3://bench-read/in/rows.parquet")
    calls = Calls(client)

    def ranged_rows() -> int:
        return sum(1 for _ in load(rows, options))

    def downloaded_rows() -> int:
        with rows.storage.local_copy(rows.obj.key) as path:
            return sum(1 for s in list_sources(str(path)) for _ in load(s, options))

    times = {"ranged": [], "download": []}
    for _ in range(repeat):
        for name, fn in (("ranged", ranged_rows), ("download", downloaded_rows)):
            calls.take()
            t = time.perf_counter()
            counts[name] = fn()
            times[name].append(time.perf_counter() - t)
            ops, got = calls.take()
            if name == "ranged":
                ranged_ops, ranged_bytes = ops, got
    assert counts["ranged"] == counts["download"], counts
    r, d = min(times["ranged"]), min(times["download"])
    meta = pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata
    print(
        f"   a {len(buf.getvalue()) / 1e6:.0f} MB Parquet object of {meta.num_row_groups} row groups, 3 columns, "
        f"text column read: ranged {r:.2f} s ({ranged_ops['GetObject']} GETs, {ranged_bytes / 1e6:.0f} MB), "
        f"download {d:.2f} s: ranged/download = {r / d:.2f}x"
    )


def chunk_rows(megabytes: int) -> dict[str, list[Any]]:
    text = bundled_text()
    rows: dict[str, list[Any]] = {f.name: [] for f in CHUNKS}
    size, i, step = 0, 0, CHUNK_CHARS * 7 // 8  # an overlap of 1/8, as 64 of 512 tokens
    while size < megabytes * 1e6:
        start = (i * step) % max(1, len(text) - CHUNK_CHARS)
        chunk = f"[{i}] " + text[start : start + CHUNK_CHARS]
        did = content_hash("doc", str(i // 40))
        for name, value in (
            ("chunk_id", content_hash("chunk", did, str(i))),
            ("doc_id", did),
            ("index", i % 40),
            ("text", chunk),
            ("token_count", 512),
            ("start", start),
            ("end", start + len(chunk)),
            ("encoding", "cl100k_base"),
        ):
            rows[name].append(value)
        size += len(chunk)
        i += 1
    return rows


def write_chunks(rows: dict[str, list[Any]], out: str, row_group_bytes: int) -> tuple[float, Path]:
    from aistack.etl.storage import open_storage

    writer = TableWriter(open_storage(out), "chunks", CHUNKS, "bench", row_group_bytes)
    count = len(rows["chunk_id"])
    started = time.perf_counter()
    for lo in range(0, count, 40):  # as write_document does: one document's chunks at a time
        columns = {k: v[lo : lo + 40] for k, v in rows.items()}
        writer.extend(columns, sum(map(len, columns["text"])))
    writer.close()
    return time.perf_counter() - started, Path(out) / writer.files[0]


def publish_on_s3(path: Path, uri: str) -> None:
    """The local chunks file as a one-file dataset on S3 (its manifest written last)."""
    from aistack.etl.storage import open_storage

    storage = open_storage(uri)
    key = "chunks/part-00000-bench.parquet"
    storage.write_bytes(key, path.read_bytes())
    rows = pq.ParquetFile(path).metadata.num_rows
    tables = {"chunks": {"files": [key], "rows": rows, "schema": "chunks"}}
    manifest = {"format": parquet_io.MANIFEST_FORMAT, "run_id": "bench", "tables": tables, "summary": {}}
    storage.write_bytes(parquet_io.MANIFEST, json.dumps(manifest).encode())


def shard_read(uri: str, shards: int, calls: Calls) -> tuple[float, float, int]:
    """The largest shard's bytes fetched from S3 over its share of the columns it reads and over
    its share of the whole table, and the row-group count."""
    from aistack.etl.storage import open_storage

    groups = chunk_row_groups(uri)
    storage = open_storage(uri)
    with storage.local_copy(groups[0][0]) as path:
        meta = pq.ParquetFile(path).metadata
        size = path.stat().st_size
    leaves = [i for i in range(meta.num_columns) if meta.schema.column(i).name in SHARD_COLUMNS]
    column_bytes = sum(
        meta.row_group(g).column(c).total_compressed_size for g in range(meta.num_row_groups) for c in leaves
    )
    total = sum(rows for _, _, rows in groups)
    assigned: list[list[tuple[str, int]]] = [[] for _ in range(shards)]
    shard = cumulative = 0
    for key, g, rows in groups:  # contiguous by rows: a shard takes groups until it has its rows
        assigned[min(shard, shards - 1)].append((key, g))
        cumulative += rows
        while shard < shards - 1 and cumulative >= total * (shard + 1) / shards:
            shard += 1
    worst = 0
    for slices in assigned:
        calls.take()
        for _ in iter_row_groups(uri, "chunks", slices, SHARD_COLUMNS):
            pass
        worst = max(worst, calls.take()[1])
    return worst / (column_bytes / shards), worst / (size / shards), len(groups)


def row_groups(megabytes: int, shards: list[int], repeat: int, etl_mb: int) -> None:
    rows = chunk_rows(megabytes)
    text_mb = sum(map(len, rows["text"])) / 1e6
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="aistack-bench-") as tmp:
        for attempt in range(repeat):
            for bound in (parquet_io.ROW_GROUP_BYTES, parquet_io.TABLE_ROW_GROUP_BYTES["chunks"]):
                out = f"{tmp}/rg{bound}-{attempt}"
                seconds, path = write_chunks(rows, out, bound)
                best = results.setdefault(bound, {"seconds": seconds, "path": path})
                if seconds <= best["seconds"]:
                    best.update(seconds=seconds, path=path)
        old, new = results[parquet_io.ROW_GROUP_BYTES], results[parquet_io.TABLE_ROW_GROUP_BYTES["chunks"]]
        print(f"\n3. writing the chunks table: {len(rows['chunk_id']):,} chunks, {text_mb:.0f} MB of text")
        for name, r in (("8 MB row groups", old), ("2 MB row groups", new)):
            size = r["path"].stat().st_size
            print(
                f"   {name}: {r['seconds']:.2f} s ({text_mb / r['seconds']:.0f} MB/s), file {size / 1e6:.0f} MB"
            )
        ratio = new["seconds"] / old["seconds"]
        size_ratio = new["path"].stat().st_size / old["path"].stat().st_size
        print(f"   2 MB / 8 MB: write time {ratio:.2f}x, file size {size_ratio:.3f}x")
        etl_with_bounds(etl_mb, repeat)
        from aistack.etl.storage import s3_client

        client = s3_client()
        client.create_bucket(Bucket="bench-shards")
        calls = Calls(client)
        for name, r in (("8 MB row groups", old), ("2 MB row groups", new)):
            r["uri"] = f"s3://bench-shards/{name.split()[0]}mb"
            publish_on_s3(r["path"], r["uri"])
        for count in shards:
            print(f"\n4. one map shard of {count} reading {SHARD_COLUMNS} from S3 (iter_row_groups)")
            for name, r in (("8 MB row groups", old), ("2 MB row groups", new)):
                of_columns, of_table, groups = shard_read(r["uri"], count, calls)
                print(
                    f"   {name}: {groups} row groups; the largest shard fetches {of_columns:.3f}x its share "
                    f"of those columns, {of_table:.3f}x its share of the table (target <= 1.2x)"
                )


def etl_with_bounds(megabytes: int, repeat: int) -> None:
    """`run_etl` end to end with the chunks row groups bounded at 8 MB, then at 2 MB."""
    from aistack.etl.job import EtlOptions, run_etl

    text = bundled_text()
    bounds = {"8 MB": parquet_io.ROW_GROUP_BYTES, "2 MB": parquet_io.TABLE_ROW_GROUP_BYTES["chunks"]}
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="aistack-bench-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        size, i = 0, 0
        while size < megabytes * 1e6:  # each copy varied, as in etl_throughput
            doc = f"Copy {i}.\n\n" + "\n\n".join(f"{p} [{i}]" for p in text.split("\n\n"))
            (src / f"doc{i:04d}.txt").write_text(doc)
            size, i = size + len(doc.encode()), i + 1
        try:
            for attempt in range(repeat):
                for name, bound in bounds.items():
                    parquet_io.TABLE_ROW_GROUP_BYTES["chunks"] = bound
                    t = time.perf_counter()
                    run_etl(str(src), f"{tmp}/out-{name[0]}-{attempt}", EtlOptions())
                    best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
        finally:
            parquet_io.TABLE_ROW_GROUP_BYTES["chunks"] = bounds["2 MB"]
    print(
        f"   run_etl of {size / 1e6:.0f} MB of text: {best['8 MB']:.2f} s with 8 MB chunks row groups, "
        f"{best['2 MB']:.2f} s with 2 MB: {best['2 MB'] / best['8 MB']:.3f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=3000, help="S3 objects to plan over")
    parser.add_argument("--mb", type=int, default=1024, help="MB of chunk text for the row-group measures")
    parser.add_argument("--shards", default="8,64", help="shard counts, comma-separated")
    parser.add_argument("--etl-mb", type=int, default=24, help="MB of text for run_etl with either bound")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    server = start_s3()
    try:
        planning_on_s3(args.objects, args.repeat)
        jsonl_on_s3(args.repeat)
        row_groups(args.mb, [int(n) for n in args.shards.split(",")], args.repeat, args.etl_mb)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
