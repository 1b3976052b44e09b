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
    """BLAKE2b-128 of the parts, each followed by a NUL byte (one update: the same digest, faster)."""
    data = "\x00".join(parts).encode("utf-8", "surrogatepass") + b"\x00"
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def doc_id(source: str, text: str) -> str:
    """Stable id of a document: hash of its source and content."""
    return _digest("doc", source, text)


def chunk_id(document_id: str, start: int, end: int) -> str:
    """Stable id of a chunk: hash of its document id and character span."""
    return _digest("chunk", document_id, str(start), str(end))


RESULTS = pa.schema(
    [
        pa.field("result_id", pa.string(), nullable=False),  # hash of stage + input ids (+ turn)
        pa.field("input_ids", pa.list_(pa.string()), nullable=False),  # chunk / result ids consumed
        pa.field("stage", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),  # map | reduce | chat
        pa.field("level", pa.int32(), nullable=False),  # reduce level or chat turn
        pa.field("agent", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),  # the model the agent asked for
        pa.field("served_model", pa.string(), nullable=False),  # the model that answered (a stand-in?)
        pa.field("engine", pa.string(), nullable=False),  # what ran it, e.g. "ollama 0.12.6"
        pa.field("model_digest", pa.string(), nullable=False),  # of the model that answered
        pa.field("role", pa.string(), nullable=False),
        pa.field("prompt_hash", pa.string(), nullable=False),
        pa.field("response", pa.large_string(), nullable=True),  # text, or JSON text for JSON contracts
        pa.field("prompt_tokens", pa.int64(), nullable=False),
        pa.field("eval_tokens", pa.int64(), nullable=False),
        pa.field("total_duration_ns", pa.int64(), nullable=False),
        pa.field("load_duration_ns", pa.int64(), nullable=False),
        pa.field("prompt_eval_duration_ns", pa.int64(), nullable=False),
        pa.field("eval_duration_ns", pa.int64(), nullable=False),
        pa.field("attempts", pa.int32(), nullable=False),  # HTTP attempts including retries
        pa.field("cached", pa.bool_(), nullable=False),
        pa.field("final", pa.bool_(), nullable=False),  # the stage's output record(s)
        pa.field("error", pa.string(), nullable=True),  # dead letter: why there is no response
    ],
    metadata={"aistack.table": "results"},
)
SCHEMAS["results"] = RESULTS


def content_hash(*parts: str) -> str:
    """Stable hash of arbitrary strings (prompt templates, inputs, cache keys)."""
    return _digest(*parts)
