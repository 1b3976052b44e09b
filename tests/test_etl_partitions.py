"""Partitioned ingest on local files: plan, run each partition, merge; the same rows as one run."""

from __future__ import annotations

import io
import itertools
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from aistack.etl.chunking import ChunkingOptions
from aistack.etl.errors import EtlError
from aistack.etl.job import EtlOptions, run_etl
from aistack.etl.loaders import LoaderOptions
from aistack.etl.parquet_io import (
    MANIFEST,
    chunk_row_groups,
    iter_row_groups,
    read_manifest,
    read_table,
)
from aistack.etl.partitions import (
    Partition,
    merge_datasets,
    plan_from_json,
    plan_partitions,
    plan_to_json,
    read_plan,
    run_etl_partition,
    write_plan,
)
from aistack.etl.tabular import iter_lines

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]
OPTIONS = EtlOptions(ChunkingOptions(64, 8), threads=2)


def _sentence(rnd: random.Random, n: int) -> str:
    return " ".join(rnd.choice(WORDS) + str(rnd.randrange(1000)) for _ in range(n)) + "."


def mixed_corpus(root: Path) -> Path:
    """Several formats, a big JSONL (with blank, broken and fieldless lines), a Parquet file of
    ten row groups (with a null), a dangling symlink, a symlink duplicate, an unknown format."""
    rnd = random.Random(1)
    src = root / "src"
    src.mkdir()
    (src / "a.txt").write_text("\n\n".join(_sentence(rnd, 30) for _ in range(20)))
    (src / "b.md").write_text("# T\n\n" + _sentence(rnd, 50))
    (src / "c.html").write_text(f"<html><body><p>{_sentence(rnd, 40)}</p></body></html>")
    lines = []
    for i in range(1500):
        kind = i % 50
        if kind == 7:
            lines.append("")
        elif kind == 13:
            lines.append("{broken")
        elif kind == 21:
            lines.append(json.dumps({"body": "no text field"}))
        else:
            lines.append(json.dumps({"text": _sentence(rnd, rnd.randrange(3, 40)), "i": i}))
    (src / "big.jsonl").write_text("\n".join(lines) + "\n")
    (src / "d.csv").write_text('id,text\n1,"hello, world"\n2,second row\n')
    texts: list[str | None] = [_sentence(rnd, rnd.randrange(5, 30)) for _ in range(2000)]
    texts[5] = None
    table = pa.table({"text": texts, "n": list(range(2000))})
    pq.write_table(table, src / "rows.parquet", row_group_size=200, compression="none")
    (src / "link.txt").symlink_to(src / "a.txt")
    (src / "dangling.txt").symlink_to(src / "nope.txt")
    (src / "image.png").write_bytes(b"\x89PNG")
    return src


def run_partitioned(
    source: str, out: str, partitions: list[Partition], options: EtlOptions = OPTIONS
) -> dict:
    """As the workflow does: the plan through its JSON, one run per partition, then the merge."""
    plan = plan_from_json(plan_to_json(partitions))
    parts = []
    for partition in plan:
        part = f"{out.rstrip('/')}/{partition.name}"
        run_etl_partition(Partition.from_json(partition.to_json()), part, options)
        parts.append(part)
    return merge_datasets(parts, out)


def assert_same_dataset(merged: str, reference: str) -> None:
    for table in ("documents", "chunks", "rejected"):
        got, want = read_table(merged, table).to_pylist(), read_table(reference, table).to_pylist()
        assert got == want, f"table {table} differs"
    a, b = read_manifest(merged)["summary"], read_manifest(reference)["summary"]
    for key in ("records_in", "documents", "chunks", "tokens", "bytes_in", "rejected", "skipped"):
        assert a[key] == b[key], key


def test_partitioned_run_equals_one_run_row_for_row(tmp_path: Path) -> None:
    src = mixed_corpus(tmp_path)
    plan = plan_partitions(str(src), 4, target_bytes=50_000)
    assert len(plan) == 4
    items = [item for p in plan for item in p.items]
    cut_jsonl = [i for i in items if i.key == "big.jsonl"]
    cut_parquet = [i for i in items if i.key == "rows.parquet"]
    assert len(cut_jsonl) >= 2 and all(i.byte_range for i in cut_jsonl), "the big JSONL is cut by bytes"
    assert len(cut_parquet) >= 2 and all(i.row_groups for i in cut_parquet), "the Parquet file by row groups"
    assert [g for i in cut_parquet for g in i.row_groups or ()] == list(range(10))
    assert {i.problem[0] for i in items if i.problem} == {"dangling_symlink", "duplicate_of"}
    assert sum(p.bytes for p in plan) == sum(f.lstat().st_size for f in src.iterdir() if not f.is_symlink())

    merged = tmp_path / "etl"
    manifest = run_partitioned(str(src), merged.as_uri(), plan)
    reference = tmp_path / "ref"
    summary = run_etl(str(src), reference.as_uri(), OPTIONS)
    assert_same_dataset(merged.as_uri(), reference.as_uri())
    total = manifest["summary"]
    assert total["records_in"] == total["documents"] + sum(total["rejected"].values()) == summary.records_in
    assert total["partitions"] == 4 and manifest["parts"] == [p.name for p in plan]
    rejected = read_table(merged.as_uri(), "rejected").to_pylist()
    assert {r["reason"] for r in rejected} >= {"invalid_json", "missing_field", "duplicate_of"}
    assert all(r["source"].startswith(src.resolve().as_uri()) for r in rejected)
    # ids do not depend on the cut: the JSONL rows are named by the byte offset of their line
    sources = read_table(merged.as_uri(), "documents", ["source"])["source"].to_pylist()
    raw = (src / "big.jsonl").read_bytes()
    for s in sources:
        if "big.jsonl#byte=" in s:
            offset = int(s.rsplit("=", 1)[1])
            assert offset == 0 or raw[offset - 1 : offset] == b"\n"


def test_small_input_is_one_partition_and_the_maximum_holds(tmp_path: Path) -> None:
    src = mixed_corpus(tmp_path)
    total = sum(p.bytes for p in plan_partitions(str(src), 1))
    [one] = plan_partitions(str(src), 64)  # 600 KB is far below 64 MiB: one partition
    assert one.bytes == total and all(i.byte_range is None and i.row_groups is None for i in one.items)
    assert len(plan_partitions(str(src), 64, target_bytes=total // 2 + 1)) == 1
    for most in (1, 2, 3, 5, 8):
        plan = plan_partitions(str(src), most, target_bytes=1)
        assert 1 <= len(plan) <= most
        assert [p.index for p in plan] == list(range(len(plan)))
    [single] = plan_partitions(str(src / "a.txt"), 8, target_bytes=1)  # one file is one document
    assert [i.key for i in single.items] == ["a.txt"]


def test_partitions_are_of_similar_size(tmp_path: Path) -> None:
    rnd = random.Random(7)
    src = tmp_path / "many"
    src.mkdir()
    for i in range(300):
        (src / f"doc{i:03d}.txt").write_text("x" * rnd.randrange(100, 5000))
    with (src / "lines.jsonl").open("w") as fh:
        for i in range(3000):
            fh.write(json.dumps({"text": "y" * rnd.randrange(10, 200), "i": i}) + "\n")
    for most in (2, 3, 8, 16):
        plan = plan_partitions(str(src), most, target_bytes=10_000)
        sizes = [p.bytes for p in plan]
        assert len(plan) == most
        assert max(sizes) <= 2 * min(sizes), sizes
    keys = [(i.key, i.byte_range) for p in plan for i in p.items]
    assert [k for k, _ in keys if k != "lines.jsonl"] == sorted(f.name for f in src.glob("*.txt")), "in order"


def test_unsplittable_files_go_whole_and_a_giant_one_makes_fewer_partitions(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.csv").write_text("text\n" + "".join(f'"row {i}\nwith a newline"\n' for i in range(20_000)))
    (src / "page.html").write_text("<p>" + "word " * 50_000 + "</p>")
    (src / "small.txt").write_text("tiny")
    plan = plan_partitions(str(src), 8, target_bytes=1000)
    items = [i for p in plan for i in p.items]
    assert [i.key for i in items] == ["big.csv", "page.html", "small.txt"]
    assert all(i.byte_range is None and i.row_groups is None for i in items)
    assert len(plan) <= 3


def test_byte_ranges_read_every_line_once_on_a_file(tmp_path: Path) -> None:
    """A line belongs to the range holding its first byte, whatever the cut (real file)."""
    path = tmp_path / "lines.jsonl"
    data = b"".join(json.dumps({"text": f"line {i}" * (i % 7)}).encode() + b"\n" for i in range(400))
    path.write_bytes(data)
    expected = _lines(data)
    for cuts in ([1], [len(data) // 2], [17, 18, 19, 500, 501], list(range(0, len(data), 997))):
        bounds = sorted({0, *cuts})
        with path.open("rb") as fh:
            got = [
                (offset, line)
                for i, start in enumerate(bounds)
                for offset, line, _ in iter_lines(fh, start, bounds[i + 1] if i + 1 < len(bounds) else None)
            ]
        assert got == expected


def _lines(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, line) of every line, split at newlines only (as a binary reader splits)."""
    out, pos = [], 0
    for line in data.split(b"\n"):
        piece = line + b"\n" if pos + len(line) < len(data) else line
        if piece:
            out.append((pos, piece))
        pos += len(piece)
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    last_newline=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    limit=st.one_of(st.none(), st.integers(min_value=1, max_value=14)),
)
def test_byte_range_reader_reads_each_line_exactly_once(
    lines: list[bytes], last_newline: bool, cuts: list[int], limit: int | None
) -> None:
    """Also with a `limit`: a longer line is skipped in bounded reads and reported by its length."""
    data = b"\n".join(lines) + (b"\n" if last_newline and lines else b"")
    bounds = sorted({0, *(c for c in cuts if c < max(len(data), 1))})
    fh = io.BytesIO(data)
    got: list[tuple[int, bytes | None, int]] = []
    for i, start in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else None
        got.extend(iter_lines(fh, start, end, limit))
    expected = _lines(data)
    assert [(offset, length) for offset, _, length in got] == [(o, len(line)) for o, line in expected]
    for (_, line, _), (_, whole) in zip(got, expected, strict=True):
        too_long = limit is not None and len(whole) - whole.endswith(b"\n") > limit
        assert line == (None if too_long else whole)


def test_utf16_jsonl_is_read_once_by_the_range_at_its_start(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    text = "".join(json.dumps({"text": f"ünïcode {i} " * 20}) + "\r\n" for i in range(300))
    (src / "wide.jsonl").write_bytes(text.encode("utf-16"))
    plan = plan_partitions(str(src), 3, target_bytes=1000)
    assert len(plan) == 3 and all(i.byte_range for p in plan for i in p.items)
    run_partitioned(str(src), (tmp_path / "etl").as_uri(), plan)
    run_etl(str(src), (tmp_path / "ref").as_uri(), OPTIONS)
    assert_same_dataset((tmp_path / "etl").as_uri(), (tmp_path / "ref").as_uri())
    sources = read_table((tmp_path / "etl").as_uri(), "documents", ["source"])["source"].to_pylist()
    assert len(sources) == 300
    line = len(text.splitlines(keepends=True)[0].encode("utf-16-le"))
    assert [int(s.rsplit("=", 1)[1]) for s in sources[:3]] == [0, 2 + line, 2 + 2 * line]


def test_a_parquet_file_rejected_whole_is_reported_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    table = pa.table({"text": list(range(5000)), "other": [str(i) * 20 for i in range(5000)]})
    pq.write_table(table, src / "ints.parquet", row_group_size=500, compression="none")
    plan = plan_partitions(str(src), 4, target_bytes=1000)
    assert len(plan) == 1, "a file whose text column is not text is not cut"
    # cut anyway (a plan made with another text field): only the first piece reports the file
    plan = plan_partitions(str(src), 4, target_bytes=1000, loader=LoaderOptions(text_field="other"))
    assert len(plan) == 4
    run_partitioned(str(src), (tmp_path / "etl").as_uri(), plan)
    rejected = read_table((tmp_path / "etl").as_uri(), "rejected").to_pylist()
    assert [r["reason"] for r in rejected] == ["wrong_type"]


def test_confinement_is_kept_by_the_plan_and_by_the_options(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("outside the root")
    (root / "inside.txt").write_text("inside the root " * 10)
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    [partition] = plan_partitions(str(root), 4, confine_to=root)
    assert partition.confine_root == str(root.resolve())
    summary = run_etl_partition(Partition.from_json(partition.to_json()), (tmp_path / "o").as_uri(), OPTIONS)
    assert dict(summary.rejected) == {"outside_input_root": 1} and summary.documents == 1
    # the options' root wins over the plan's: a plan of another root is refused
    other = tmp_path / "other"
    other.mkdir()
    refuse = EtlOptions(loader=LoaderOptions(confine_to=other))
    with pytest.raises(EtlError, match="outside the input root"):
        run_etl_partition(partition, (tmp_path / "o2").as_uri(), refuse)


def test_the_plan_file_round_trips_and_refuses_what_is_not_a_plan(tmp_path: Path) -> None:
    src = mixed_corpus(tmp_path)
    plan = plan_partitions(str(src), 3, target_bytes=50_000)
    uri = write_plan((tmp_path / "run").as_uri(), plan)
    assert uri.endswith("/partitions.json")
    assert read_plan((tmp_path / "run").as_uri()) == plan
    with pytest.raises(EtlError, match=r"no partition plan at .*partitions\.json is missing"):
        read_plan((tmp_path / "nowhere").as_uri())
    data = plan[0].to_dict()
    bad = [
        ({**data, "format": "other"}, "not an aistack partition"),
        ({**data, "items": [{**data["items"][0], "key": "../../etc/passwd.txt"}]}, r"items\[0\]\.key"),
        ({**data, "items": [{**data["items"][0], "key": "/etc/passwd.txt"}]}, r"items\[0\]\.key"),
        ({**data, "items": [{**data["items"][0], "format": "jsonl"}]}, r"items\[0\]\.format"),
        ({**data, "items": [{**data["items"][0], "byte_range": [5, 2]}]}, r"items\[0\]\.byte_range"),
        ({**data, "items": [{**data["items"][0], "size": -1}]}, r"items\[0\]\.size"),
        ({**data, "index": True}, r"partition\.index"),
    ]
    for doc, message in bad:
        with pytest.raises(EtlError, match=message):
            Partition.from_json(json.dumps(doc))
    with pytest.raises(EtlError, match="not valid JSON"):
        Partition.from_json("{")
    with pytest.raises(EtlError, match="indexes are not"):
        plan_from_json(plan_to_json(list(reversed(plan))))
    with pytest.raises(ValueError, match="max_partitions"):
        plan_partitions(str(src), 0)


def _partition_datasets(tmp_path: Path) -> tuple[Path, list[str]]:
    src = mixed_corpus(tmp_path)
    out = tmp_path / "etl"
    parts = []
    for partition in plan_partitions(str(src), 3, target_bytes=50_000):
        parts.append((out / partition.name).as_uri())
        run_etl_partition(partition, parts[-1], OPTIONS)
    return out, parts


def test_merge_is_idempotent_and_deletes_nothing_it_lists(tmp_path: Path) -> None:
    out, parts = _partition_datasets(tmp_path)
    first = merge_datasets(parts, out.as_uri())
    again = merge_datasets(parts, out.as_uri())  # an Argo retry of the merge step
    assert again == first == read_manifest(out.as_uri())
    listed = [key for table in first["tables"].values() for key in table["files"]]
    assert listed and all((out / key).is_file() for key in listed)
    assert all(key.split("/")[0] in first["parts"] for key in listed), "keys are relative to the merged root"
    rows = read_table(out.as_uri(), "chunks")
    assert rows.num_rows == first["tables"]["chunks"]["rows"] == first["summary"]["chunks"]
    # each partition dataset is still a dataset of its own
    assert sum(read_manifest(p)["tables"]["chunks"]["rows"] for p in parts) == rows.num_rows


def test_merge_replaces_an_earlier_dataset_without_touching_the_parts(tmp_path: Path) -> None:
    out, parts = _partition_datasets(tmp_path)
    run_etl(str(tmp_path / "src"), out.as_uri(), OPTIONS)  # an unpartitioned dataset was here
    old = [k for t in read_manifest(out.as_uri())["tables"].values() for k in t["files"]]
    merged = merge_datasets(parts, out.as_uri())
    assert not any((out / key).exists() for key in old), "the replaced dataset's files are swept"
    assert all((out / k).is_file() for t in merged["tables"].values() for k in t["files"])
    merge_datasets(parts[:2], out.as_uri())  # fewer parts now: the third keeps its own files
    assert read_table(parts[2], "chunks").num_rows > 0


def test_merge_names_a_missing_part_and_writes_nothing(tmp_path: Path) -> None:
    out, parts = _partition_datasets(tmp_path)
    missing = (out / "part-00007").as_uri()
    with pytest.raises(EtlError, match=rf"partition dataset {missing} is missing"):
        merge_datasets([*parts, missing], out.as_uri())
    assert not (out / MANIFEST).exists()
    with pytest.raises(EtlError, match="is not inside"):
        merge_datasets([*parts, (tmp_path / "elsewhere").as_uri()], out.as_uri())
    with pytest.raises(EtlError, match="listed twice"):
        merge_datasets([parts[0], parts[0]], out.as_uri())
    assert not (out / MANIFEST).exists()


def test_a_merge_that_fails_before_its_manifest_leaves_none(tmp_path: Path) -> None:
    """A part whose counts do not add up fails the merge, after the other parts were read."""
    out, parts = _partition_datasets(tmp_path)
    manifest_path = out / "part-00002" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["summary"]["records_in"] += 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(EtlError, match=r"part-00002: in = out \+ rejected does not hold"):
        merge_datasets(parts, out.as_uri())
    assert not (out / MANIFEST).exists()
    manifest["summary"]["records_in"] -= 1
    manifest["tables"]["chunks"]["rows"] += 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(EtlError, match=r"part-00002: table 'chunks' has \d+ rows, its summary says"):
        merge_datasets(parts, out.as_uri())
    assert not (out / MANIFEST).exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "no temporary file left"


def test_row_group_slices_read_exactly_those_rows(tmp_path: Path) -> None:
    out, parts = _partition_datasets(tmp_path)
    merge_datasets(parts, out.as_uri())
    groups = chunk_row_groups(out.as_uri())
    assert sum(rows for _, _, rows in groups) == read_manifest(out.as_uri())["tables"]["chunks"]["rows"]
    everything = read_table(out.as_uri(), "chunks", ["chunk_id"])["chunk_id"].to_pylist()
    streamed = [
        cid
        for b in iter_row_groups(out.as_uri(), "chunks", groups, ["chunk_id"])
        for cid in b.column(0).to_pylist()
    ]
    assert streamed == everything
    # every other row group, projected to one column
    picked = groups[::2]
    batches = list(iter_row_groups(out.as_uri(), "chunks", [(k, g) for k, g, _ in picked], ["token_count"]))
    assert all(b.schema.names == ["token_count"] for b in batches)
    assert sum(b.num_rows for b in batches) == sum(rows for _, _, rows in picked)
    with pytest.raises(EtlError, match="is not a file of table 'chunks'"):
        list(iter_row_groups(out.as_uri(), "chunks", [("../secret.parquet", 0)], None))
    with pytest.raises(EtlError, match="there is no row group 99"):
        list(iter_row_groups(out.as_uri(), "chunks", [(groups[0][0], 99)], None))


def test_chunks_row_groups_are_bounded_by_bytes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(3)
    (src / "big.txt").write_text("\n\n".join(_sentence(rnd, 60) for _ in range(12_000)))  # ~6 MB
    run_etl(str(src), (tmp_path / "o").as_uri(), EtlOptions(threads=2))
    groups = chunk_row_groups((tmp_path / "o").as_uri())
    assert len(groups) >= 3
    for key, g, _ in groups[:-1]:
        text = pq.ParquetFile(tmp_path / "o" / key).metadata.row_group(g).column(3)
        assert text.path_in_schema == "text" and text.total_uncompressed_size < 3 * 2**20


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_a_partition_is_rejected_not_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("text " * 100)
    os.mkfifo(src / "pipe.jsonl")
    [partition] = plan_partitions(str(src), 2)
    summary = run_etl_partition(partition, (tmp_path / "o").as_uri(), OPTIONS)
    assert dict(summary.rejected) == {"not_a_regular_file": 1}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(
        st.tuples(st.sampled_from(["txt", "jsonl", "csv"]), st.integers(min_value=0, max_value=6000)),
        min_size=1,
        max_size=12,
    ),
    most=st.integers(min_value=1, max_value=10),
    target=st.integers(min_value=1, max_value=3000),
)
def test_plans_tile_the_listing_in_order(files: list[tuple[str, int]], most: int, target: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for i, (ext, size) in enumerate(files):
            Path(tmp, f"f{i:02d}.{ext}").write_bytes(b'{"text": "a"}\n' * (size // 14) + b"x" * (size % 14))
        listed = [
            (f"f{i:02d}.{ext}", Path(tmp, f"f{i:02d}.{ext}").stat().st_size)
            for i, (ext, _) in enumerate(files)
        ]
        plan = plan_partitions(tmp, most, target_bytes=target)
    total = sum(size for _, size in listed)
    assert 1 <= len(plan) <= most and all(p.items for p in plan)
    if total < 2 * target:
        assert len(plan) == 1
    assert sum(p.bytes for p in plan) == total
    items = [item for p in plan for item in p.items]
    assert [k for k, _ in listed] == list(dict.fromkeys(i.key for i in items)), "every entry, in order"
    for key, size in listed:
        pieces = [i for i in items if i.key == key]
        if len(pieces) == 1:
            assert pieces[0].byte_range is None and pieces[0].bytes == size
            continue
        assert key.endswith(".jsonl"), "only line files are cut"
        ranges = [i.byte_range for i in pieces]
        assert ranges[0][0] == 0 and ranges[-1][1] is None
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges)), "ranges tile the file"
        assert sum(i.bytes for i in pieces) == size
        event("a line file cut")
