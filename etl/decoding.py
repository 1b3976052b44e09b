"""Bytes to text: UTF-8 (a BOM dropped), UTF-16/32 when their byte-order mark says so, and the
reason when it is none of them."""

from __future__ import annotations

import codecs
import io
from typing import BinaryIO

from aistack.etl.records import LoaderOptions, Rejection


def too_large(uri: str, size: int, options: LoaderOptions) -> Rejection:
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


def bom_codec(head: bytes) -> str | None:
    """UTF-16 or UTF-32 when the bytes start with that byte-order mark."""
    return next((name for bom, name in _BOMS if head.startswith(bom)), None)


def decode(raw: bytes, uri: str) -> str | Rejection:
    codec = bom_codec(raw[:4])
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


def text_stream(fh: BinaryIO, uri: str) -> io.TextIOWrapper | Rejection:
    head = fh.peek(8192)[:8192] if hasattr(fh, "peek") else b""
    codec = bom_codec(head[:4])
    if codec is None and b"\x00" in head:
        return Rejection(uri, "load", "binary", "NUL bytes in the first 8 KiB: not a text file", 0)
    return io.TextIOWrapper(fh, encoding=codec or "utf-8-sig", newline="")
