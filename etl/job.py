"""The ETL job: source files -> documents -> cleaned text -> chunks, published as Parquet."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from aistack.etl.chunking import Chunk, Chunker, ChunkingOptions
from aistack.etl.cleaning import clean_text
from aistack.etl.decoding import too_large
from aistack.etl.errors import EtlError
from aistack.etl.loaders import (
    LoadedDocument,
    LoaderOptions,
    Record,
    Rejection,
    Skipped,
    SourceFile,
    SourcePiece,
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


Job = tuple[SourceFile | Record, int]  # a file to load whole, or a record of a tabular file; progress bytes


def _jobs(pieces: list[SourcePiece], options: LoaderOptions) -> Iterator[Job]:
    """Whole files go to the workers to be read; tabular files (or their pieces) are parsed
    here, record by record."""
    for piece in pieces:
        source = piece.file
        if source.obj.problem is not None or source.format not in ("jsonl", "csv", "parquet"):
            yield source, piece.weight  # (only tabular files are ever cut into pieces)
            continue
        previous: Record | None = None
        for record in load(piece, options):
            if previous is not None:
                yield previous, 0
            previous = record
        if previous is not None:
            yield previous, piece.weight
        # (an empty tabular file yields nothing: its header-only content holds no record)


def _prepare(
    job: Job, options: LoaderOptions
) -> list[tuple[Record | tuple[LoadedDocument, str], str | None]]:
    """In a worker: load (whole files), check the size, clean. Cleaned documents come with their text."""
    what = job[0]
    records = list(load(what, options)) if isinstance(what, SourceFile) else [what]
    out: list[tuple[Record | tuple[LoadedDocument, str], str | None]] = []
    for record in records:
        if not isinstance(record, LoadedDocument):
            out.append((record, None))
        elif record.bytes > options.max_document_bytes:
            out.append((too_large(record.source, record.bytes, options), None))
        elif text := clean_text(record.text):
            record.text = ""  # only the cleaned text is kept from here on: memory stays flat
            out.append(((record, text), text))
        else:
            out.append(
                (
                    Rejection(record.source, "clean", "empty", "no text left after cleaning", record.bytes),
                    None,
                )
            )
    return out


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
    if not doc_chunks:
        return 0
    starts = [c.start for c in doc_chunks]
    ends = [c.end for c in doc_chunks]
    counts = [c.token_count for c in doc_chunks]
    texts = [c.text for c in doc_chunks]
    chunks.extend(
        {
            "chunk_id": [chunk_id(did, a, b) for a, b in zip(starts, ends, strict=True)],
            "doc_id": [did] * len(doc_chunks),
            "index": [c.index for c in doc_chunks],
            "text": texts,
            "token_count": counts,
            "start": starts,
            "end": ends,
            "encoding": [encoding] * len(doc_chunks),
        },
        sum(map(len, texts)),
    )
    tokens = sum(counts)
    return tokens


def _with_progress(jobs: Iterator[Job], progress: ProgressFn | None) -> Iterator[Job]:
    for job in jobs:
        yield job
        if progress and job[1]:
            progress(job[1])


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
    return run_pieces([SourcePiece(s) for s in sources], out, options, progress, started=started)


def run_pieces(
    pieces: list[SourcePiece],
    out: str,
    options: EtlOptions | None = None,
    progress: ProgressFn | None = None,
    *,
    started: float | None = None,
) -> EtlSummary:
    """The ETL of these files and pieces of files, in order, published at `out` as one dataset."""
    options = options or EtlOptions()
    started = time.perf_counter() if started is None else started
    dataset = DatasetWriter(out)
    summary = EtlSummary(output=dataset.storage.uri)
    documents = dataset.table("documents", DOCUMENTS)
    chunks = dataset.table("chunks", CHUNKS)
    rejected = dataset.table("rejected", REJECTED)

    def reject(r: Rejection) -> None:
        summary.rejected[r.reason] += 1
        rejected.append(
            {"source": r.source, "stage": r.stage, "reason": r.reason, "message": r.message, "bytes": r.bytes}
        )

    try:
        with Chunker(options.chunking, threads=options.threads) as chunker:
            encoding = chunker.options.encoding
            stream = chunker.map_chunked(
                _with_progress(_jobs(pieces, options.loader), progress),
                lambda job: _prepare(job, options.loader),
                lambda job: (
                    job[0].obj.size if isinstance(job[0], SourceFile) else getattr(job[0], "bytes", 0) + 1
                ),
            )
            for item, doc_chunks in stream:
                if isinstance(item, Skipped):
                    summary.skipped[item.reason] += 1
                    continue
                summary.records_in += 1
                if isinstance(item, Rejection):
                    summary.bytes_in += item.bytes
                    reject(item)
                    continue
                doc, text = item  # type: ignore[misc]
                summary.bytes_in += doc.bytes
                summary.tokens += write_document(doc, text, doc_chunks or [], documents, chunks, encoding)
                summary.documents += 1
                summary.chunks += len(doc_chunks or [])
        summary.seconds = time.perf_counter() - started
        if summary.records_in != summary.documents + summary.rejected_total:  # in = out + rejected
            raise EtlError(
                f"in = out + rejected does not hold: {summary.records_in} records in, "
                f"{summary.documents} documents and {summary.rejected_total} rejected"
            )
        summary.manifest = dataset.publish(summary.as_dict())
    except BaseException as exc:
        dataset.abort(exc)
        raise
    summary.seconds = time.perf_counter() - started
    return summary
