"""Loaders: txt, md, rst, html, jsonl, csv and parquet files, from directories, globs or S3.

Every input record (a file, a JSONL line, a CSV or Parquet row) comes out either as a
`LoadedDocument` or as a `Rejection` with the reason: nothing is dropped silently. Lines
that hold no record at all (blank JSONL or CSV lines) come out as `Skipped`, so they are
counted. Files are read only if they are regular files (see localfs.py).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from aistack.etl.errors import EtlError, InputProblem
from aistack.etl.html_text import html_to_text
from aistack.etl.localfs import inside
from aistack.etl.storage import (
    LocalStorage,
    S3Storage,
    Storage,
    StoredObject,
    matches,
    open_storage,
    split_pattern,
)

FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}
__all__ = ["html_to_text"]  # re-exported: loaders.html_to_text is public


@dataclass(slots=True)
class LoaderOptions:
    text_field: str = "text"  # JSONL field, CSV column or Parquet column holding the text
    max_document_bytes: int = 16 * 1024 * 1024
    # read SOURCE but never outside this directory (or s3:// prefix): each file must resolve
    # inside it, else it is rejected as outside_input_root; '..' that leaves it is refused
    confine_to: str | Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_document_bytes, int) or self.max_document_bytes <= 0:
            raise ValueError(
                f"max_document_bytes must be a positive integer, got {self.max_document_bytes!r}"
            )
        if not self.text_field:
            raise ValueError("text_field must not be empty")


@dataclass(slots=True)
class LoadedDocument:
    source: str
    text: str
    bytes: int
    metadata: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class Rejection:
    source: str
    stage: str
    reason: str
    message: str
    bytes: int = 0


@dataclass(slots=True)
class Skipped:
    """A line that holds no record (a blank JSONL or CSV line): counted, not a record."""

    source: str
    reason: str


Record = LoadedDocument | Rejection | Skipped


@dataclass(frozen=True, slots=True)
class SourceFile:
    storage: Storage
    obj: StoredObject

    @property
    def uri(self) -> str:
        return self.storage.child(self.obj.key)

    @property
    def format(self) -> str | None:
        name = self.obj.key.rsplit("/", 1)[-1].lower()
        return FORMATS.get("." + name.rsplit(".", 1)[-1]) if "." in name else None


def _confinement(source: str, root: str, pattern: str, confine_to: str | Path) -> str | None:
    """Refuse a source that lexically leaves `confine_to`; the resolved local root to check files against."""
    if ".." in pattern.split("/"):
        raise EtlError(f"{source!r}: a pattern with '..' segments may leave the input root; refused")
    confine, target = open_storage(str(confine_to)), open_storage(root)
    if isinstance(confine, LocalStorage) and isinstance(target, LocalStorage):
        base, path = os.path.abspath(confine.root), os.path.abspath(target.root)
        if not inside(path, base):
            raise EtlError(f"{source!r} is outside the input root {base}; refused")
        return os.path.realpath(base)
    if isinstance(confine, S3Storage) and isinstance(target, S3Storage):
        confined = [seg for seg in confine.prefix.split("/") if seg]
        segments = [seg for seg in target.prefix.split("/") if seg]
        within = target.bucket == confine.bucket and segments[: len(confined)] == confined
        if ".." in segments or not within:
            raise EtlError(f"{source!r} is outside the input root {confine.uri}; refused")
        return None
    raise EtlError(f"{source!r} is outside the input root {confine_to}; refused")


def list_sources(source: str, confine_to: str | Path | None = None) -> list[SourceFile]:
    """Files named by a path, directory, glob, file:// or s3:// URI, in a stable order.

    Every entry is listed, readable or not (its `obj.problem` says why not); a second entry
    that is the same file (a symlink or hard link to one already listed) is marked
    `duplicate_of`, so one file is one document and ids stay unique.
    """
    root, pattern = split_pattern(source)
    confine_root = _confinement(source, root, pattern, confine_to) if confine_to is not None else None
    storage = open_storage(root)
    if isinstance(storage, LocalStorage):
        storage.confine_root = confine_root
    objects = [o for o in storage.list() if matches(o.key, pattern)]
    if len(objects) == 1 and objects[0].key == "":  # the source is one file: list it by name
        parent, _, name = root.rstrip("/").rpartition("/")
        storage = open_storage(parent or ".")
        if isinstance(storage, LocalStorage):
            storage.confine_root = confine_root
        objects = [replace(objects[0], key=name)]
    if not objects:
        raise EtlError(f"no input files found at {source!r}")
    # the file itself (not a symlink to it), else the first entry in order, is the document
    first: dict[tuple[int, int], str] = {}
    for o in sorted(objects, key=lambda o: o.symlink):
        if o.identity is not None:
            first.setdefault(o.identity, o.key)
    for i, o in enumerate(objects):
        if o.identity is not None and first[o.identity] != o.key:
            problem = InputProblem("duplicate_of", f"the same file as {storage.child(first[o.identity])}")
            objects[i] = replace(o, problem=problem, identity=None)
    return [SourceFile(storage, o) for o in objects]


def load(source: SourceFile, options: LoaderOptions) -> Iterator[Record]:
    problem = source.obj.problem
    if problem is not None:
        yield Rejection(source.uri, "load", problem.reason, str(problem), 0)
        return
    fmt = source.format
    if fmt is None:
        yield Rejection(source.uri, "load", "unsupported_format", "unknown file extension", source.obj.size)
        return
    try:
        yield from _LOADERS[fmt](source, options)
    except InputProblem as exc:  # unreadable now (it changed since the listing, or a read error)
        yield Rejection(source.uri, "load", exc.reason, str(exc), source.obj.size)
    except OSError as exc:
        yield Rejection(
            source.uri, "load", "unreadable", f"cannot read: {exc.strerror or exc}", source.obj.size
        )


def _too_large(uri: str, size: int, options: LoaderOptions) -> Rejection:
    return Rejection(
        uri,
        "load",
        "too_large",
        f"{size} bytes exceeds max_document_bytes={options.max_document_bytes}",
        size,
    )


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16: FF FE 00 00 starts with FF FE
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _bom_codec(head: bytes) -> str | None:
    """UTF-16 or UTF-32 when the bytes start with that byte-order mark."""
    return next((name for bom, name in _BOMS if head.startswith(bom)), None)


def _decode(raw: bytes, uri: str) -> str | Rejection:
    codec = _bom_codec(raw[:4])
    if codec is not None:
        try:
            return raw.decode(codec)  # the codec consumes the BOM
        except UnicodeDecodeError as exc:
            message = f"starts with a {codec.upper()} byte-order mark but is not {codec.upper()} at byte {exc.start}"
            return Rejection(uri, "load", "undecodable", message, len(raw))
    if b"\x00" in raw[:8192]:
        return Rejection(uri, "load", "binary", "NUL bytes in the first 8 KiB: not a text file", len(raw))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return Rejection(uri, "load", "not_utf8", f"not UTF-8 at byte {exc.start}: {exc.reason}", len(raw))


def _load_text(source: SourceFile, options: LoaderOptions) -> Iterator[Record]:
    if source.obj.size > options.max_document_bytes:
        yield _too_large(source.uri, source.obj.size, options)
        return
    with source.storage.open_input(source.obj.key) as fh:
        raw = fh.read(options.max_document_bytes + 1)  # the file may have grown since it was listed
    if len(raw) > options.max_document_bytes:
        yield _too_large(source.uri, len(raw), options)
        return
    text = _decode(raw, source.uri)
    if isinstance(text, Rejection):
        yield text
        return
    fmt = source.format or "text"
    meta: dict[str, object] = {"format": fmt}
    if fmt == "html":
        text, title = html_to_text(text)
        if title:
            meta["title"] = title
    yield LoadedDocument(source.uri, text, len(raw), meta)


def _rows_source(uri: str, row: int) -> str:
    return f"{uri}#row={row}"


def _json_record(line: bytes | str, where: str, options: LoaderOptions) -> Record:
    size = len(line)
    if size > options.max_document_bytes:
        return _too_large(where, size, options)
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


def _load_jsonl(source: SourceFile, options: LoaderOptions) -> Iterator[Record]:
    with source.storage.open_input(source.obj.key) as fh:
        codec = _bom_codec(fh.peek(4)[:4]) if hasattr(fh, "peek") else None
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


def _text_stream(fh: BinaryIO, uri: str) -> io.TextIOWrapper | Rejection:
    head = fh.peek(8192)[:8192] if hasattr(fh, "peek") else b""
    codec = _bom_codec(head[:4])
    if codec is None and b"\x00" in head:
        return Rejection(uri, "load", "binary", "NUL bytes in the first 8 KiB: not a text file", 0)
    return io.TextIOWrapper(fh, encoding=codec or "utf-8-sig", newline="")


def _load_csv(source: SourceFile, options: LoaderOptions) -> Iterator[Record]:
    csv.field_size_limit(options.max_document_bytes + 1)
    name = options.text_field
    with source.storage.open_input(source.obj.key) as fh:
        stream = _text_stream(fh, source.uri)
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


def _load_parquet(source: SourceFile, options: LoaderOptions) -> Iterator[Record]:
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


_LOADERS = {
    "text": _load_text,
    "markdown": _load_text,
    "html": _load_text,
    "jsonl": _load_jsonl,
    "csv": _load_csv,
    "parquet": _load_parquet,
}
