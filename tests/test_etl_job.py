"""The ETL job end to end on local disk: tables, accounting, determinism, atomic publish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT

from aistack.etl.chunking import ChunkingOptions
from aistack.etl.errors import EtlError
from aistack.etl.job import EtlOptions, run_etl
from aistack.etl.parquet_io import MANIFEST, read_manifest, read_table

DATASET = ROOT / "datasets" / "python-docs"


def _corpus(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "one.txt").write_text("First document.\n\nIt has two paragraphs. " * 40)
    (src / "two.html").write_text("<html><body><p>Second document about Python.</p></body></html>")
    (src / "empty.md").write_text("   \n\n  ")
    (src / "binary.txt").write_bytes(b"\x00\xff" * 10)
    return src


def test_tables_accounting_and_chunk_spans(tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run_etl(str(_corpus(tmp_path)), out.as_uri(), EtlOptions(ChunkingOptions(64, 8)))
    assert summary.records_in == 4 and summary.documents == 2
    assert dict(summary.rejected) == {"empty": 1, "binary": 1}
    docs = read_table(out.as_uri(), "documents").to_pylist()
    chunks = read_table(out.as_uri(), "chunks").to_pylist()
    rejected = read_table(out.as_uri(), "rejected").to_pylist()
    assert {r["reason"] for r in rejected} == {"empty", "binary"}
    assert all(r["source"].startswith("file://") for r in rejected)
    by_doc = {d["doc_id"]: d["text"] for d in docs}
    for c in chunks:
        assert by_doc[c["doc_id"]][c["start"] : c["end"]] == c["text"]
        assert 0 < c["token_count"] <= 64 and c["encoding"] == "cl100k_base"
    assert sum(c["token_count"] for c in chunks) == summary.tokens
    manifest = read_manifest(out.as_uri())
    assert manifest["summary"]["documents"] == 2
    assert manifest["tables"]["chunks"]["rows"] == len(chunks) == summary.chunks


def test_ids_are_deterministic_and_rerun_replaces_the_dataset(tmp_path: Path) -> None:
    src, out = _corpus(tmp_path), tmp_path / "out"
    run_etl(str(src), out.as_uri())
    first = read_table(out.as_uri(), "chunks", ["chunk_id", "doc_id"]).to_pylist()
    old_files = read_manifest(out.as_uri())["tables"]["chunks"]["files"]
    run_etl(str(src), out.as_uri())
    assert read_table(out.as_uri(), "chunks", ["chunk_id", "doc_id"]).to_pylist() == first
    assert len({r["chunk_id"] for r in first}) == len(first), "ids are unique"
    assert not any((out / f).exists() for f in old_files), "parts of the replaced dataset are swept"


def test_failed_run_publishes_nothing_and_keeps_the_previous_dataset(tmp_path: Path, monkeypatch) -> None:
    src, out = _corpus(tmp_path), tmp_path / "out"
    run_etl(str(src), out.as_uri())
    before = (out / MANIFEST).read_text()

    from aistack.etl import job

    def boom(text: str) -> str:
        raise RuntimeError("cleaning exploded")

    monkeypatch.setattr(job, "clean_text", boom)
    with pytest.raises(RuntimeError, match="cleaning exploded"):
        run_etl(str(src), out.as_uri())
    assert (out / MANIFEST).read_text() == before
    assert read_table(out.as_uri(), "documents").num_rows == 2
    assert not list(out.rglob(".*part*")), "no temporary files left behind"


def test_reading_an_unpublished_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EtlError, match=r"no published dataset .*_manifest\.json is missing"):
        read_table(tmp_path.as_uri(), "chunks")


def test_bundled_dataset_runs_with_no_rejections(tmp_path: Path) -> None:
    summary = run_etl(str(DATASET), (tmp_path / "o").as_uri())
    assert summary.documents == summary.records_in > 40
    assert summary.tokens > 200_000
    meta = json.loads(read_table((tmp_path / "o").as_uri(), "documents", ["metadata"])["metadata"][0].as_py())
    assert meta["format"] in {"html", "text"}
