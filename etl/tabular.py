"""Loaders of tabular files: a JSONL line, a CSV row or a Parquet row is one record."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator

from aistack.etl.decoding import bom_codec, text_stream, too_large
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


def load_jsonl(source: SourceFile, options: LoaderOptions) -> Iterator[Record]:
    with source.storage.open_input(source.obj.key) as fh:
        codec = bom_codec(fh.peek(4)[:4]) if hasattr(fh, "peek") else None
        lines: Iterator[bytes | str] = iter(io.TextIOWrapper(fh, encoding=codec)) if codec else iter(fh)
        lineno = 0
        while True:
            try:
                line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                where = f"{source.uri}#line={lineno + 1}"
                yield Rejection(
                    where,
                    "load",
                    "undecodable",
                    f"not {codec}: {exc.reason}; the rest of the file is not read",
                    0,
                )
                return
            lineno += 1
            where = f"{source.uri}#line={lineno}"
            if not line.strip():
                yield Skipped(where, "blank_line")
                continue
            yield _json_record(line, where, options)


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


def _is_text_type(t: object) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def load_parquet(source: SourceFile, options: LoaderOptions) -> Iterator[Record]:
    import pyarrow.parquet as pq

    name = options.text_field
    with source.storage.open_input(source.obj.key) as fh:
        try:
            pf = pq.ParquetFile(fh)
        except Exception as exc:
            yield Rejection(source.uri, "load", "invalid_parquet", str(exc), source.obj.size)
            return
        schema = pf.schema_arrow
        if name not in schema.names:
            message = f"no column {name!r}; columns are {schema.names}"
            yield Rejection(source.uri, "load", "missing_column", message, source.obj.size)
            return
        column_type = schema.field(name).type
        if not _is_text_type(column_type):
            message = f"column {name!r} is {column_type}, not a string column ({pf.metadata.num_rows} rows not read)"
            yield Rejection(source.uri, "load", "wrong_type", message, source.obj.size)
            return
        row_no = 0
        for batch in pf.iter_batches(columns=[name], batch_size=1024):
            for text in batch.column(0).to_pylist():
                row_no += 1
                where = _rows_source(source.uri, row_no)
                if text is None:
                    yield Rejection(where, "load", "missing_field", f"{name!r} is null", 0)
                    continue
                yield LoadedDocument(where, text, len(text.encode()), {"format": "parquet"})
