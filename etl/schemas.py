"""Parquet schemas of the tables that flow between steps, and their content-derived ids."""

from __future__ import annotations

import hashlib

import pyarrow as pa

DOCUMENTS = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("metadata", pa.string(), nullable=False),  # JSON object
    ],
    metadata={"aistack.table": "documents"},
)

CHUNKS = pa.schema(
    [
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("index", pa.int32(), nullable=False),
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("token_count", pa.int32(), nullable=False),
        pa.field("start", pa.int64(), nullable=False),  # character span in the document text
        pa.field("end", pa.int64(), nullable=False),
        pa.field("encoding", pa.string(), nullable=False),
    ],
    metadata={"aistack.table": "chunks"},
)

REJECTED = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
    ],
    metadata={"aistack.table": "rejected"},
)

SCHEMAS: dict[str, pa.Schema] = {"documents": DOCUMENTS, "chunks": CHUNKS, "rejected": REJECTED}


def _digest(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def doc_id(source: str, text: str) -> str:
    """Stable id of a document: hash of its source and content."""
    return _digest("doc", source, text)


def chunk_id(document_id: str, start: int, end: int) -> str:
    """Stable id of a chunk: hash of its document id and character span."""
    return _digest("chunk", document_id, str(start), str(end))
