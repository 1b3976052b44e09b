"""Loaders: txt, md, rst, html, jsonl, csv and parquet files, from directories, globs or S3.

Every input record (a file, a JSONL line, a CSV or Parquet row) comes out either as a
`LoadedDocument` or as a `Rejection` with the reason: nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow.parquet as pq
from selectolax.lexbor import LexborHTMLParser

from aistack.etl.errors import EtlError
from aistack.etl.storage import Storage, StoredObject, matches, open_storage, split_pattern

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
_BOILERPLATE = (
    "script, style, noscript, template, nav, header, footer, aside, form, svg, iframe, button, "
    "[role=navigation], [role=search], [role=banner], [role=contentinfo], [aria-hidden=true], a.headerlink"
)
_BLOCKS = (
    "p, div, section, article, main, li, ul, ol, dl, dt, dd, h1, h2, h3, h4, h5, h6, blockquote, "
    "table, tr, td, th, br, hr, figure, figcaption, caption"
)
_BLOCK_MARK = "\x1e"  # record separator: never survives cleaning, so it cannot collide with text


@dataclass(slots=True)
class LoaderOptions:
    text_field: str = "text"  # JSONL field, CSV column or Parquet column holding the text
    max_document_bytes: int = 16 * 1024 * 1024


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


Record = LoadedDocument | Rejection


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


def list_sources(source: str) -> list[SourceFile]:
    """Files named by a path, directory, glob, file:// or s3:// URI, in a stable order."""
    root, pattern = split_pattern(source)
    storage = open_storage(root)
    objects = [o for o in storage.list() if matches(o.key, pattern)]
    if len(objects) == 1 and objects[0].key == "":  # the source is one file: list it by name
        parent, _, name = root.rstrip("/").rpartition("/")
        storage = open_storage(parent or ".")
        objects = [StoredObject(name, objects[0].size)]
    if not objects:
        raise EtlError(f"no input files found at {source!r}")
    return [SourceFile(storage, o) for o in objects]


def load(source: SourceFile, options: LoaderOptions) -> Iterator[Record]:
    fmt = source.format
    if fmt is None:
        yield Rejection(source.uri, "load", "unsupported_format", "unknown file extension", source.obj.size)
        return
    if fmt in ("jsonl", "csv", "parquet"):
        yield from _TABULAR[fmt](source, options)
        return
    if source.obj.size > options.max_document_bytes:
        yield _too_large(source.uri, source.obj.size, options)
        return
    raw = source.storage.read_bytes(source.obj.key)
    text = _decode(raw, source.uri)
    if isinstance(text, Rejection):
        yield text
        return
    meta: dict[str, object] = {"format": fmt}
    if fmt == "html":
        text, title = html_to_text(text)
        if title:
            meta["title"] = title
    yield LoadedDocument(source.uri, text, len(raw), meta)


def _too_large(uri: str, size: int, options: LoaderOptions) -> Rejection:
    return Rejection(
        uri,
        "load",
        "too_large",
        f"{size} bytes exceeds max_document_bytes={options.max_document_bytes}",
        size,
    )


def _decode(raw: bytes, uri: str) -> str | Rejection:
    if b"\x00" in raw[:8192]:
        return Rejection(uri, "load", "binary", "NUL bytes in the first 8 KiB: not a text file", len(raw))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return Rejection(uri, "load", "undecodable", f"not UTF-8 at byte {exc.start}: {exc.reason}", len(raw))


def html_to_text(html: str) -> tuple[str, str]:
    """Visible text of an HTML page without boilerplate; blocks become paragraphs, <pre> kept."""
    tree = LexborHTMLParser(html)
    title_node = tree.css_first("title")
    title = title_node.text(strip=True) if title_node else ""
    for node in tree.css(_BOILERPLATE):
        node.decompose()
    preformatted: list[str] = []
    for node in tree.css("pre"):
        preformatted.append(node.text(deep=True))
        node.replace_with(f"{_BLOCK_MARK}\x1a{len(preformatted) - 1}\x1a{_BLOCK_MARK}")
    for node in tree.css(_BLOCKS):
        node.insert_before(_BLOCK_MARK)
        node.insert_after(_BLOCK_MARK)
    root = tree.body or tree.root
    text = root.text(separator="") if root else ""
    blocks = (" ".join(block.split()) for block in text.split(_BLOCK_MARK))
    joined = "\n\n".join(b for b in blocks if b)
    for i, pre in enumerate(preformatted):
        joined = joined.replace(f"\x1a{i}\x1a", pre.strip("\n"), 1)
    return joined, title


def _rows_source(uri: str, row: int) -> str:
    return f"{uri}#row={row}"


def _load_jsonl(source: SourceFile, options: LoaderOptions) -> Iterator[Record]:
    with source.storage.local_copy(source.obj.key) as path, path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{source.uri}#line={lineno}"
            if len(line) > options.max_document_bytes:
                yield _too_large(where, len(line), options)
                continue
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield Rejection(where, "load", "invalid_json", str(exc), len(line))
                continue
            text = record.get(options.text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                yield Rejection(
                    where, "load", "missing_field", f"no string field {options.text_field!r}", len(line)
                )
                continue
            meta = {k: v for k, v in record.items() if k != options.text_field}
            yield LoadedDocument(where, text, len(line), {"format": "jsonl", **meta})


def _load_csv(source: SourceFile, options: LoaderOptions) -> Iterator[Record]:
    csv.field_size_limit(options.max_document_bytes + 1)
    with source.storage.local_copy(source.obj.key) as path:
        raw = path.read_bytes()
    decoded = _decode(raw, source.uri)
    if isinstance(decoded, Rejection):
        yield decoded
        return
    reader = csv.DictReader(io.StringIO(decoded, newline=""))
    if options.text_field not in (reader.fieldnames or []):
        yield Rejection(
            source.uri, "load", "missing_column",
            f"no column {options.text_field!r}; columns are {reader.fieldnames}", len(raw),
        )  # fmt: skip
        return
    try:
        for row_no, row in enumerate(reader, start=1):
            text = row.get(options.text_field) or ""
            meta = {k: v for k, v in row.items() if k != options.text_field and k is not None}
            yield LoadedDocument(
                _rows_source(source.uri, row_no), text, len(text.encode()), {"format": "csv", **meta}
            )
    except csv.Error as exc:
        yield Rejection(source.uri, "load", "invalid_csv", f"line {reader.line_num}: {exc}", len(raw))


def _load_parquet(source: SourceFile, options: LoaderOptions) -> Iterator[Record]:
    with source.storage.local_copy(source.obj.key) as path:
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:
            yield Rejection(source.uri, "load", "invalid_parquet", str(exc), source.obj.size)
            return
        if options.text_field not in pf.schema_arrow.names:
            yield Rejection(
                source.uri, "load", "missing_column",
                f"no column {options.text_field!r}; columns are {pf.schema_arrow.names}", source.obj.size,
            )  # fmt: skip
            return
        row_no = 0
        for batch in pf.iter_batches(columns=[options.text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                row_no += 1
                where = _rows_source(source.uri, row_no)
                if not isinstance(text, str):
                    yield Rejection(where, "load", "missing_field", f"{options.text_field!r} is null", 0)
                    continue
                yield LoadedDocument(where, text, len(text.encode()), {"format": "parquet"})


_TABULAR = {"jsonl": _load_jsonl, "csv": _load_csv, "parquet": _load_parquet}
