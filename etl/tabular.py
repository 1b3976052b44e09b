"""Loaders of tabular files: a JSONL line, a CSV row or a Parquet row is one record."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from aistack.etl.decoding import bom_codec, text_stream, too_large
from aistack.etl.parquet_ranges import iter_row_group_batches
from aistack.etl.ranged import RangedReader
from aistack.etl.records import LoadedDocument, LoaderOptions, Record, Rejection, Skipped, SourceFile


def _rows_source(uri: str, row: int) -> str:
    return f"{uri}#row={row}"


def _json_record(line: bytes | str, where: str, options: LoaderOptions) -> Record:
    size = len(line)
    if size > options.max_document_bytes:
        return too_large(where, size, options)
    try:
        record = json.loads(line)
    except UnicodeDecodeError as exc:
        return Rejection(
            where, "load", "not_utf8", f"not UTF-8 at byte {exc.start} of the line: {exc.reason}", size
        )
    except json.JSONDecodeError as exc:
        return Rejection(where, "load", "invalid_json", str(exc), size)
    name = options.text_field
    if not isinstance(record, dict):
        message = f"a JSON {type(record).__name__}, not an object with a string field {name!r}"
        return Rejection(where, "load", "missing_field", message, size)
    text = record.get(name)
    if text is None:
        return Rejection(where, "load", "missing_field", f"no string field {name!r}", size)
    if not isinstance(text, str):
        return Rejection(
            where, "load", "wrong_type", f"field {name!r} is a JSON {type(text).__name__}, not a string", size
        )
    meta = {k: v for k, v in record.items() if k != name}
    return LoadedDocument(where, text, size, {"format": "jsonl", **meta})


LINE_BLOCK = 1 << 20  # how much of an over-long line is read at a time while skipping it


def _skip_line(fh: BinaryIO) -> int:
    """Read to the end of the current line in bounded blocks; the bytes skipped."""
    skipped = 0
    while block := fh.readline(LINE_BLOCK):
        skipped += len(block)
        if block.endswith(b"\n"):
            break
    return skipped


def iter_lines(
    fh: BinaryIO, start: int = 0, end: int | None = None, limit: int | None = None
) -> Iterator[tuple[int, bytes | None, int]]:
    """(offset, line, length) of every line whose first byte lies in [start, end) (`end` None: to EOF).

    A line belongs to the range that holds its first byte: a reader starting at `start` > 0
    skips the partial line there unless byte `start - 1` is a newline, and reads whole lines
    while they start before `end`, so ranges that tile a file read each line exactly once.
    A line longer than `limit` bytes is never held in memory: it comes as (offset, None, length).
    """
    pos = start
    if start > 0:
        fh.seek(start - 1)
        if fh.read(1) != b"\n":
            pos += _skip_line(fh)  # the rest of a line that began before `start`
    else:
        fh.seek(0)
    while end is None or pos < end:
        line = fh.readline(limit + 1) if limit is not None else fh.readline()
        if not line:
            return
        if limit is not None and len(line) > limit and not line.endswith(b"\n"):
            length = len(line) + _skip_line(fh)
            yield pos, None, length
            pos += length
            continue
        yield pos, line, len(line)
        pos += len(line)


def _line_record(line: bytes | str, where: str, options: LoaderOptions) -> Record:
    if not line.strip():
        return Skipped(where, "blank_line")
    return _json_record(line, where, options)


def load_jsonl(
    source: SourceFile, options: LoaderOptions, byte_range: tuple[int, int | None] | None = None
) -> Iterator[Record]:
    """Records of a JSONL file, or of the lines that start in `byte_range`; each named
    `URI#byte=OFFSET` (the offset of its line's first byte), which a range reader knows."""
    start, end = byte_range or (0, None)
    with source.storage.open_ranged(source.obj.key, source.obj.size) as fh:
        head = fh.read(4)
        codec = bom_codec(head)
        if codec is None:
            if isinstance(fh, RangedReader):
                fh.limit_read_ahead(end)
            for offset, line, length in iter_lines(fh, start, end, options.max_document_bytes):
                where = f"{source.uri}#byte={offset}"
                if line is None:
                    message = (
                        f"a line of {length} bytes exceeds max_document_bytes={options.max_document_bytes}"
                    )
                    yield Rejection(where, "load", "too_large", message, length)
                else:
                    yield _line_record(line, where, options)
        elif start == 0:  # UTF-16/32 is not cut by bytes: the range at 0 reads it whole, others nothing
            yield from _decoded_lines(fh, codec, head, source, options)


def _decoded_lines(
    fh: BinaryIO, codec: str, head: bytes, source: SourceFile, options: LoaderOptions
) -> Iterator[Record]:
    """Lines of a UTF-16/32 file (its BOM says which), named by the byte offset they start at."""
    fh.seek(0)
    endian = "-le" if head[:2] == b"\xff\xfe" else "-be"
    bom = 4 if codec == "utf-32" else 2
    # newline="\n": lines end where a binary reader's would, and keep their bytes
    lines = io.TextIOWrapper(fh, encoding=codec, newline="\n")
    pos, bom_bytes = 0, bom  # the first line's bytes include the byte-order mark
    try:
        while True:
            try:
                line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                message = f"not {codec}: {exc.reason}; the rest of the file is not read"
                yield Rejection(f"{source.uri}#byte={pos}", "load", "undecodable", message, 0)
                return
            yield _line_record(line, f"{source.uri}#byte={pos}", options)
            pos += len(line.encode(codec + endian)) + bom_bytes
            bom_bytes = 0
    finally:
        lines.detach()  # the caller closes the file


def load_csv(source: SourceFile, options: LoaderOptions) -> Iterator[Record]:
    csv.field_size_limit(options.max_document_bytes + 1)
    name = options.text_field
    with source.storage.open_input(source.obj.key) as fh:
        stream = text_stream(fh, source.uri)
        if isinstance(stream, Rejection):
            yield stream
            return
        reader = csv.reader(stream)
        row_no = 0
        try:
            header = next(reader, None)
            if header is None:
                yield Rejection(source.uri, "load", "empty", "no header row", source.obj.size)
                return
            dupes = [c for c, n in Counter(header).items() if n > 1]
            if dupes:
                message = f"column {dupes[0]!r} appears {header.count(dupes[0])} times in the header"
                yield Rejection(source.uri, "load", "duplicate_column", message, source.obj.size)
                return
            if name not in header:
                message = f"no column {name!r}; columns are {header}"
                yield Rejection(source.uri, "load", "missing_column", message, source.obj.size)
                return
            idx = header.index(name)
            for row in reader:
                if not row:
                    yield Skipped(f"{source.uri}#line={reader.line_num}", "blank_line")
                    continue
                row_no += 1
                where = _rows_source(source.uri, row_no)
                size = sum(len(v) for v in row)
                if len(row) > len(header):
                    message = f"line {reader.line_num}: {len(row)} fields, the header has {len(header)}"
                    yield Rejection(where, "load", "extra_fields", message, size)
                    continue
                if idx >= len(row):
                    message = f"line {reader.line_num}: {len(row)} fields, no value for column {name!r}"
                    yield Rejection(where, "load", "missing_field", message, size)
                    continue
                text = row[idx]
                meta = {h: (row[i] if i < len(row) else None) for i, h in enumerate(header) if i != idx}
                yield LoadedDocument(where, text, len(text.encode()), {"format": "csv", **meta})
        except csv.Error as exc:
            message = f"line {reader.line_num}: {exc}; the rest of the file is not read"
            yield Rejection(source.uri, "load", "invalid_csv", message, source.obj.size)
        except UnicodeDecodeError as exc:
            message = f"not {stream.encoding} near line {reader.line_num + 1}: {exc.reason}; the rest of the file is not read"
            reason = "not_utf8" if stream.encoding.startswith("utf-8") else "undecodable"
            yield Rejection(source.uri, "load", reason, message, source.obj.size)


def is_text_type(t: object) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def load_parquet(
    source: SourceFile, options: LoaderOptions, row_groups: tuple[int, ...] | None = None
) -> Iterator[Record]:
    """Rows of the text column (only that column is read), of every row group or of
    `row_groups`; each named `URI#row=N`, N counted from 1 over the whole file (the footer
    gives the rows before a row group). Problems of the file as a whole are reported by the
    piece that holds row group 0, so a file cut into pieces reports them once."""
    name = options.text_field
    first = row_groups is None or 0 in row_groups
    with source.storage.open_ranged(source.obj.key, source.obj.size) as fh:
        try:
            pf = pq.ParquetFile(fh)
        except Exception as exc:
            if first:
                yield Rejection(source.uri, "load", "invalid_parquet", str(exc), source.obj.size)
            else:  # the planner read this footer: the file changed, or a read failed
                yield Rejection(
                    source.uri, "load", "unreadable", f"row groups {list(row_groups or ())}: {exc}"
                )
            return
        schema = pf.schema_arrow
        if name not in schema.names:
            if first:
                message = f"no column {name!r}; columns are {schema.names}"
                yield Rejection(source.uri, "load", "missing_column", message, source.obj.size)
            return
        column_type = schema.field(name).type
        if not is_text_type(column_type):
            if first:
                message = f"column {name!r} is {column_type}, not a string column ({pf.metadata.num_rows} rows not read)"
                yield Rejection(source.uri, "load", "wrong_type", message, source.obj.size)
            return
        meta = pf.metadata
        groups = range(meta.num_row_groups) if row_groups is None else row_groups
        missing = [g for g in groups if not 0 <= g < meta.num_row_groups]
        if missing:
            message = (
                f"has {meta.num_row_groups} row groups, the plan names row group {missing[0]}: "
                "the file changed since it was planned"
            )
            yield Rejection(source.uri, "load", "unreadable", message, 0)
            return
        row_start = [0]
        for g in range(meta.num_row_groups):
            row_start.append(row_start[-1] + meta.row_group(g).num_rows)
        current, row_no = -1, 0
        for g, batch in iter_row_group_batches(pf, fh, groups, [name], batch_size=1024):
            if g != current:
                current, row_no = g, row_start[g]
            for text in batch.column(0).to_pylist():
                row_no += 1
                where = _rows_source(source.uri, row_no)
                if text is None:
                    yield Rejection(where, "load", "missing_field", f"{name!r} is null", 0)
                    continue
                yield LoadedDocument(where, text, len(text.encode()), {"format": "parquet"})
