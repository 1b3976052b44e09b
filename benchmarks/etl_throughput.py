"""ETL throughput: aistack's chunk + tokenize + Parquet write against raw tiktoken and chonkie.

All runs happen in this process, on the same corpus and cores, so the ratios are what count
(absolute numbers move with the machine). Targets: aistack >= 0.8x raw tiktoken
`encode_ordinary_batch`, >= 2x chonkie's TokenChunker (when installed), and peak RSS of
`aistack etl` over a 1 GB corpus <= 400 MB (`--rss-mb 1024`).

    python benchmarks/etl_throughput.py [--mb 32] [--repeat 3] [--rss-mb 0] [--rss-doc-mb 0]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aistack.etl.chunking import Chunker, ChunkingOptions
from aistack.etl.encodings import load_encoding
from aistack.etl.job import run_etl, write_document
from aistack.etl.loaders import LoadedDocument
from aistack.etl.parquet_io import DatasetWriter
from aistack.etl.schemas import CHUNKS, DOCUMENTS

ROOT = Path(__file__).resolve().parents[1]
MAX_TOKENS, OVERLAP = 512, 64


def corpus(megabytes: float) -> list[str]:
    """The bundled dataset's cleaned documents, repeated up to `megabytes` of text."""
    with tempfile.TemporaryDirectory() as tmp:
        run_etl(str(ROOT / "datasets" / "python-docs"), tmp)
        from aistack.etl.parquet_io import read_table

        texts = read_table(tmp, "documents", ["text"])["text"].to_pylist()
    docs, size, i = [], 0, 0
    while size < megabytes * 1e6:
        # vary each copy so nothing can be cached between documents
        doc = f"Copy {i}.\n\n" + texts[i % len(texts)]
        docs.append(doc)
        size += len(doc.encode())
        i += 1
    return docs


def best_of(repeat: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def aistack_chunk_write(docs: list[str], out: str) -> None:
    dataset = DatasetWriter(out)
    documents, chunks = dataset.table("documents", DOCUMENTS), dataset.table("chunks", CHUNKS)
    items = ((LoadedDocument(f"mem://{i}", text, len(text)), text) for i, text in enumerate(docs))
    with Chunker(ChunkingOptions(MAX_TOKENS, OVERLAP)) as chunker:
        for (doc, text), doc_chunks in chunker.chunk_stream(items, lambda d: d[1]):
            write_document(doc, text, doc_chunks, documents, chunks, chunker.options.encoding)
    dataset.publish({})


def peak_rss_mb(corpus_mb: int, doc_mb: float) -> float:
    """Peak RSS of `aistack etl` (a child process) over `corpus_mb` MB of files of ~`doc_mb` MB.

    Files are the bundled documents (varied), concatenated up to `doc_mb`: 0 keeps each
    document its own file (typical sizes, tens of KB), 8 makes 8 MB documents (a worst case:
    a document is held whole, at 1-4 bytes per character).
    """
    docs = corpus(8)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        written, i, buffer = 0, 0, ""
        while written < corpus_mb * 1e6:
            buffer += f"File {i}.\n\n" + docs[i % len(docs)] + "\n\n"
            i += 1
            if len(buffer) >= doc_mb * 1e6:
                (src / f"part{i:06d}.txt").write_text(buffer)
                written += len(buffer.encode())
                buffer = ""
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        subprocess.run(
            [sys.executable, "-m", "aistack", "etl", str(src), "--out", str(Path(tmp) / "out")],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(before, after) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=32, help="corpus size in MB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--rss-mb", type=int, default=0, help="also measure peak RSS over a corpus this large"
    )
    parser.add_argument(
        "--rss-doc-mb", type=float, default=0, help="document size of that corpus (0: as bundled)"
    )
    args = parser.parse_args()

    docs = corpus(args.mb)
    mb = sum(len(d.encode()) for d in docs) / 1e6
    enc = load_encoding()
    tokens = sum(len(t) for t in enc.encode_ordinary_batch(docs))
    Chunker(ChunkingOptions(MAX_TOKENS, OVERLAP)).chunk(docs[0])  # warm lookup tables
    print(f"corpus: {len(docs)} documents, {mb:.1f} MB, {tokens:,} tokens; cores: {os.cpu_count()}")

    results: dict[str, float] = {}
    results["tiktoken encode_ordinary_batch"] = best_of(args.repeat, lambda: enc.encode_ordinary_batch(docs))
    with tempfile.TemporaryDirectory() as tmp:
        results["aistack chunk+tokenize+parquet"] = best_of(
            args.repeat, lambda: aistack_chunk_write(docs, tmp)
        )
    try:
        from chonkie import TokenChunker

        chonkie = TokenChunker(tokenizer=enc, chunk_size=MAX_TOKENS, chunk_overlap=OVERLAP)
        results["chonkie TokenChunker"] = best_of(
            args.repeat, lambda: chonkie.chunk_batch(docs, show_progress_bar=False)
        )
    except ImportError:
        print("chonkie not installed (pip install '.[bench]'): skipping it")

    for name, seconds in results.items():
        print(f"{name:34s} {mb / seconds:8.1f} MB/s {tokens / seconds / 1e6:8.2f} Mtok/s")
    ours = results["aistack chunk+tokenize+parquet"]
    ratio = results["tiktoken encode_ordinary_batch"] / ours
    print(f"ratio aistack / raw tiktoken: {ratio:.2f}x (target >= 0.80x)")
    if "chonkie TokenChunker" in results:
        print(
            f"ratio aistack / chonkie:      {results['chonkie TokenChunker'] / ours:.2f}x (target >= 2.00x)"
        )
    if args.rss_mb:
        peak = peak_rss_mb(args.rss_mb, args.rss_doc_mb)
        size = f"{args.rss_doc_mb} MB documents" if args.rss_doc_mb else "documents as bundled"
        print(f"peak RSS of aistack etl over {args.rss_mb} MB ({size}): {peak:.0f} MB (target <= 400 MB)")


if __name__ == "__main__":
    main()
