"""`aistack etl`: the command (registered by aistack.cli). The ETL's libraries (pyarrow, numpy,
tiktoken) are imported only when it runs, and nothing else is: `aistack etl` starts fast."""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Annotated

import typer

from aistack.console import fail, out, progress_bar, say, state, summary_table

MIN_CHUNK_TOKENS = 8  # aistack.etl.chunking.MIN_MAX_TOKENS, without importing numpy for the check


def _bounded_malloc() -> None:
    """Fix glibc's mmap threshold so large freed buffers go back to the OS.

    glibc raises the threshold after freeing a big block; later big strings then come from
    the heap and stay resident. Long ETL runs over large documents would grow for nothing.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if name:
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
            ctypes.CDLL(name).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB


def check_flags(
    chunk_tokens: int, overlap: int, max_document_mb: float, workers: int | None, text_field: str
) -> None:
    """Refuse bad flag values before any work, naming the flag."""
    if chunk_tokens < MIN_CHUNK_TOKENS:
        raise ValueError(f"--chunk-tokens must be at least {MIN_CHUNK_TOKENS}, got {chunk_tokens}")
    if not 0 <= overlap < chunk_tokens:
        raise ValueError(f"--overlap must be >= 0 and < --chunk-tokens ({chunk_tokens}), got {overlap}")
    if not math.isfinite(max_document_mb) or max_document_mb <= 0:
        raise ValueError(f"--max-document-mb must be a number greater than 0, got {max_document_mb}")
    if max_document_mb * 1024 * 1024 < 1:
        raise ValueError(f"--max-document-mb must allow at least one byte, got {max_document_mb}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if not text_field:
        raise ValueError("--text-field must not be empty")


def etl_command(
    source: Annotated[str, typer.Argument(help="File, directory, glob, file:// or s3:// URI of the corpus.")],
    out_uri: Annotated[
        str, typer.Option("--out", help="Where to publish the tables: a path, file:// or s3://.")
    ],
    chunk_tokens: Annotated[int, typer.Option("--chunk-tokens", help="Max tokens per chunk.")] = 512,
    overlap: Annotated[int, typer.Option("--overlap", help="Overlap between chunks, in tokens.")] = 64,
    encoding: Annotated[str, typer.Option("--encoding", help="tiktoken encoding.")] = "cl100k_base",
    text_field: Annotated[
        str, typer.Option("--text-field", help="Text field of jsonl/csv/parquet.")
    ] = "text",
    max_document_mb: Annotated[
        float, typer.Option("--max-document-mb", help="Larger documents are rejected.")
    ] = 16,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Threads that tokenize and chunk (default: one per core).")
    ] = None,
) -> None:
    """Load, clean and chunk a corpus into documents/chunks/rejected Parquet tables."""
    try:
        check_flags(chunk_tokens, overlap, max_document_mb, workers, text_field)
    except ValueError as exc:
        fail(exc)
    _bounded_malloc()
    from aistack.etl.chunking import ChunkingOptions
    from aistack.etl.job import EtlOptions, run_etl
    from aistack.etl.loaders import LoaderOptions

    try:
        options = EtlOptions(
            chunking=ChunkingOptions(chunk_tokens, overlap, encoding),
            loader=LoaderOptions(
                text_field=text_field, max_document_bytes=int(max_document_mb * 1024 * 1024)
            ),
            threads=workers,  # None: the chunker's default, one per core
        )
        with progress_bar() as bar:
            task = bar.add_task("etl", total=None)
            summary = run_etl(
                source,
                out_uri,
                options,
                progress=lambda n: bar.advance(task, n),
                on_start=lambda total: bar.update(task, total=total),
            )
    except Exception as exc:
        fail(exc)
        return
    table = summary_table("ETL summary")
    table.add_row("records in", f"{summary.records_in:,}")
    table.add_row("documents", f"{summary.documents:,}")
    table.add_row("chunks", f"{summary.chunks:,}")
    table.add_row("tokens", f"{summary.tokens:,}")
    rejected = ", ".join(f"{k}={v}" for k, v in sorted(summary.rejected.items())) or "none"
    table.add_row("rejected", f"{summary.rejected_total:,} ({rejected})")
    table.add_row(
        "in = out + rejected", f"{summary.records_in} = {summary.documents} + {summary.rejected_total}"
    )
    if summary.skipped:
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(summary.skipped.items()))
        table.add_row("skipped (no record)", f"{sum(summary.skipped.values()):,} ({skipped})")
    table.add_row("throughput", f"{summary.mb_per_second:.1f} MB/s ({summary.seconds:.2f} s)")
    try:
        out.print(table, highlight=False)
        say(f"output: {summary.output}", stderr=False)  # outside the table: a table would cut it with "…"
    except OSError as exc:  # stdout full or gone: the dataset is published all the same
        fail(OSError(f"could not print the summary of the published {summary.output}: {exc}"))
    state["finished"] = True  # the dataset is published and its files closed
