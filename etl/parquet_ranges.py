"""Reading row groups of a Parquet file with few requests: windows of column chunks.

Over S3 (ranged.py) every read pyarrow makes outside the buffer is a GET, and a GET costs a
round trip that would carry about a megabyte. So the column chunks to be read are gathered
into windows of consecutive row groups, each window's span fetched in one GET when the gaps
between its chunks (the columns not read) are small: a gap costs less to read than a round
trip to skip. This is what Arrow's read coalescing does (its CacheOptions: hole and range
size limits, sized from the network), done here per window so memory stays one window.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from aistack.etl.ranged import RangedReader

HOLE_LIMIT = 1024 * 1024  # a gap up to this is read rather than skipped
WINDOW_LIMIT = 8 * 1024 * 1024  # the most one window fetches (and holds in memory)


def _chunk_range(column: Any) -> tuple[int, int]:
    """The bytes of one column chunk, as Arrow computes them (the dictionary page comes first)."""
    start = column.data_page_offset
    if column.has_dictionary_page and 0 < column.dictionary_page_offset < start:
        start = column.dictionary_page_offset
    return start, start + column.total_compressed_size


def _leaves(meta: pq.FileMetaData, columns: list[str] | None) -> list[int]:
    """The leaf columns that reading `columns` reads (a list column is its leaf)."""
    return [
        i
        for i in range(meta.num_columns)
        if columns is None or meta.schema.column(i).path.split(".")[0] in columns
    ]


def windows(
    meta: pq.FileMetaData, groups: Sequence[int], columns: list[str] | None
) -> Iterator[tuple[tuple[int, int] | None, list[int]]]:
    """Consecutive runs of `groups` with the byte span to fetch for each (None: read as is)."""
    leaves = _leaves(meta, columns)
    run: list[int] = []
    low = high = 0
    for g in groups:
        group = meta.row_group(g)
        ranges = sorted(_chunk_range(group.column(c)) for c in leaves)
        if not ranges:
            yield None, [g]
            continue
        start, end = ranges[0][0], max(e for _, e in ranges)
        dense = all(b[0] - a[1] <= HOLE_LIMIT for a, b in itertools.pairwise(ranges))
        if run and dense and 0 <= start - high <= HOLE_LIMIT and max(end, high) - low <= WINDOW_LIMIT:
            run.append(g)
            high = max(high, end)
            continue
        if run:
            yield (low, high), run
            run = []
        if dense and end - start <= WINDOW_LIMIT:
            run, low, high = [g], start, end
        else:
            yield None, [g]
    if run:
        yield (low, high), run


def iter_row_group_batches(
    pf: pq.ParquetFile,
    fh: object,
    groups: Sequence[int],
    columns: list[str] | None,
    batch_size: int = 65_536,
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(row group, batch) of exactly `groups`, in order, with only `columns` read. `fh` is
    the file `pf` reads: over S3 (a RangedReader) each window is fetched in one GET."""
    if not isinstance(fh, RangedReader):
        for g in groups:
            for batch in pf.iter_batches(batch_size=batch_size, row_groups=[g], columns=columns):
                yield g, batch
        return
    for span, run in windows(pf.metadata, groups, columns):
        if span is not None:
            fh.prefetch(*span)
        for g in run:
            for batch in pf.iter_batches(batch_size=batch_size, row_groups=[g], columns=columns):
                yield g, batch
