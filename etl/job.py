"""The ETL job: source files -> documents -> cleaned text -> chunks, published as Parquet."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from aistack.etl.chunking import Chunk, Chunker, ChunkingOptions
from aistack.etl.cleaning import clean_text
from aistack.etl.loaders import (
    LoadedDocument,
    LoaderOptions,
    Record,
    Rejection,
    Skipped,
    SourceFile,
    list_sources,
    load,
)
from aistack.etl.parquet_io import DatasetWriter, TableWriter
from aistack.etl.schemas import CHUNKS, DOCUMENTS, REJECTED, chunk_id, doc_id


@dataclass(slots=True)
class EtlOptions:
    chunking: ChunkingOptions = field(default_factory=ChunkingOptions)
    loader: LoaderOptions = field(default_factory=LoaderOptions)
    threads: int | None = None  # chunking threads; default: one per core


@dataclass(slots=True)
class EtlSummary:
    output: str = ""
    manifest: str = ""
    records_in: int = 0
    documents: int = 0
    chunks: int = 0
    tokens: int = 0
    bytes_in: int = 0
    seconds: float = 0.0
    rejected: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # lines holding no record (blank lines)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def mb_per_second(self) -> float:
        return self.bytes_in / 1e6 / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "records_in": self.records_in,
            "documents": self.documents,
            "chunks": self.chunks,
            "tokens": self.tokens,
            "bytes_in": self.bytes_in,
            "rejected": dict(sorted(self.rejected.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "seconds": round(self.seconds, 3),
        }


ProgressFn = Callable[[int], None]  # called with bytes of input consumed


def _records(
    sources: list[SourceFile], options: LoaderOptions, progress: ProgressFn | None
) -> Iterator[Record]:
    for source in sources:
        yield from load(source, options)
        if progress:
            progress(source.obj.size)


def write_document(
    doc: LoadedDocument,
    text: str,
    doc_chunks: list[Chunk],
    documents: TableWriter,
    chunks: TableWriter,
    encoding: str,
) -> int:
    """Append one chunked document's rows; returns its token total."""
    did = doc_id(doc.source, text)
    meta = json.dumps(doc.metadata, sort_keys=True, default=str)
    documents.append(
        {"doc_id": did, "source": doc.source, "text": text, "bytes": doc.bytes, "metadata": meta}, len(text)
    )
    tokens = 0
    for c in doc_chunks:
        row = {
            "chunk_id": chunk_id(did, c.start, c.end),
            "doc_id": did,
            "index": c.index,
            "text": c.text,
            "token_count": c.token_count,
            "start": c.start,
            "end": c.end,
            "encoding": encoding,
        }
        chunks.append(row, len(c.text))
        tokens += c.token_count
    return tokens


def run_etl(
    source: str,
    out: str,
    options: EtlOptions | None = None,
    progress: ProgressFn | None = None,
    on_start: Callable[[int], None] | None = None,
) -> EtlSummary:
    """Load, clean and chunk everything under `source`; publish the tables at `out`."""
    options = options or EtlOptions()
    started = time.perf_counter()
    sources = list_sources(source, options.loader.confine_to)
    if on_start:
        on_start(sum(s.obj.size for s in sources))
    dataset = DatasetWriter(out)
    summary = EtlSummary(output=dataset.storage.uri)
    documents = dataset.table("documents", DOCUMENTS)
    chunks = dataset.table("chunks", CHUNKS)
    rejected = dataset.table("rejected", REJECTED)
    max_bytes = options.loader.max_document_bytes

    def reject(r: Rejection) -> None:
        summary.rejected[r.reason] += 1
        rejected.append(
            {"source": r.source, "stage": r.stage, "reason": r.reason, "message": r.message, "bytes": r.bytes}
        )

    def cleaned(records: Iterator[Record]) -> Iterator[tuple[LoadedDocument, str]]:
        for record in records:
            if isinstance(record, Skipped):
                summary.skipped[record.reason] += 1
                continue
            summary.records_in += 1
            summary.bytes_in += record.bytes
            if isinstance(record, Rejection):
                reject(record)
            elif record.bytes > max_bytes:
                message = f"{record.bytes} bytes exceeds max_document_bytes={max_bytes}"
                reject(Rejection(record.source, "load", "too_large", message, record.bytes))
            elif text := clean_text(record.text):
                record.text = ""  # only the cleaned text is kept from here on: memory stays flat
                yield record, text
            else:
                reject(
                    Rejection(record.source, "clean", "empty", "no text left after cleaning", record.bytes)
                )

    try:
        with Chunker(options.chunking, threads=options.threads) as chunker:
            stream = chunker.chunk_stream(
                cleaned(_records(sources, options.loader, progress)), lambda d: d[1]
            )
            for (doc, text), doc_chunks in stream:
                summary.tokens += write_document(
                    doc, text, doc_chunks, documents, chunks, chunker.options.encoding
                )
                summary.documents += 1
                summary.chunks += len(doc_chunks)
        summary.seconds = time.perf_counter() - started
        assert summary.records_in == summary.documents + summary.rejected_total  # in = out + rejected
        summary.manifest = dataset.publish(summary.as_dict())
    except BaseException as exc:
        dataset.abort(exc)
        raise
    summary.seconds = time.perf_counter() - started
    return summary
