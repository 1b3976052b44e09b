"""Loaders: txt, md, rst, html, jsonl, csv and parquet files, from directories, globs or S3.

Every input record (a file, a JSONL line, a CSV or Parquet row) comes out either as a
`LoadedDocument` or as a `Rejection` with the reason: nothing is dropped silently. Lines
that hold no record at all (blank JSONL or CSV lines) come out as `Skipped`, so they are
counted. Files are read only if they are regular files (see localfs.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from aistack.etl.decoding import decode, too_large
from aistack.etl.errors import EtlError, InputProblem, StorageError
from aistack.etl.html_text import html_to_text
from aistack.etl.localfs import inside
from aistack.etl.records import (
    FORMATS,
    LoadedDocument,
    LoaderOptions,
    Record,
    Rejection,
    Skipped,
    SourceFile,
    SourcePiece,
)
from aistack.etl.storage import LocalStorage, S3Storage, matches, open_storage, split_pattern
from aistack.etl.tabular import load_csv, load_jsonl, load_parquet

__all__ = [  # the loaders' public names, wherever they live
    "FORMATS",
    "LoadedDocument",
    "LoaderOptions",
    "Record",
    "Rejection",
    "Skipped",
    "SourceFile",
    "SourcePiece",
    "html_to_text",
    "list_sources",
    "load",
]


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


def confinement_root(root: str, confine_to: str | Path) -> str | None:
    """Refuse a `root` outside `confine_to`; the resolved local root files must lie in (None on S3)."""
    return _confinement(root, root, "", confine_to)


def list_sources(source: str, confine_to: str | Path | None = None) -> list[SourceFile]:
    """Files named by a path, directory, glob, file:// or s3:// URI, in a stable order.

    Every entry is listed, readable or not (its `obj.problem` says why not); a second entry
    that is the same file (a symlink or hard link to one already listed) is marked
    `duplicate_of`, so one file is one document and ids stay unique.
    """
    root, pattern = split_pattern(source)
    confine_root = _confinement(source, root, pattern, confine_to) if confine_to is not None else None
    storage = open_storage(root, confine_root)
    objects = [o for o in storage.list() if matches(o.key, pattern)]
    if len(objects) == 1 and objects[0].key == "":  # the source is one file: list it by name
        parent, _, name = root.rstrip("/").rpartition("/")
        storage = open_storage(parent or ".", confine_root)
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


def load(what: SourceFile | SourcePiece, options: LoaderOptions) -> Iterator[Record]:
    """The records of a source file, or of the piece of one a partition reads."""
    piece = what if isinstance(what, SourcePiece) else SourcePiece(what)
    source = piece.file
    problem = source.obj.problem
    if problem is not None:
        yield Rejection(source.uri, "load", problem.reason, str(problem), 0)
        return
    fmt = source.format
    if fmt is None:
        yield Rejection(source.uri, "load", "unsupported_format", "unknown file extension", source.obj.size)
        return
    size = piece.weight
    try:
        if piece.byte_range is not None and fmt == "jsonl":
            yield from load_jsonl(source, options, piece.byte_range)
        elif piece.row_groups is not None and fmt == "parquet":
            yield from load_parquet(source, options, piece.row_groups)
        elif piece.byte_range is not None or piece.row_groups is not None:
            raise EtlError(f"{source.uri}: a {fmt} file is read whole, not by byte range or row group")
        else:
            yield from _LOADERS[fmt](source, options)
    except InputProblem as exc:  # unreadable now (it changed since the listing, or a read error)
        yield Rejection(source.uri, "load", exc.reason, str(exc), size)
    except StorageError as exc:  # an S3 read that failed after retries, or an object that changed
        yield Rejection(source.uri, "load", "unreadable", str(exc), size)
    except OSError as exc:
        yield Rejection(source.uri, "load", "unreadable", f"cannot read: {exc.strerror or exc}", size)


def _load_text(source: SourceFile, options: LoaderOptions) -> Iterator[Record]:
    if source.obj.size > options.max_document_bytes:
        yield too_large(source.uri, source.obj.size, options)
        return
    with source.storage.open_input(source.obj.key) as fh:
        raw = fh.read(options.max_document_bytes + 1)  # the file may have grown since it was listed
    if len(raw) > options.max_document_bytes:
        yield too_large(source.uri, len(raw), options)
        return
    text = decode(raw, source.uri)
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


_LOADERS = {
    "text": _load_text,
    "markdown": _load_text,
    "html": _load_text,
    "jsonl": load_jsonl,
    "csv": load_csv,
    "parquet": load_parquet,
}
