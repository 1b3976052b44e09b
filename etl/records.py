"""The records loaders produce, their options, and the source files they read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aistack.etl.storage import Storage, StoredObject

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
        return format_of(self.obj.key)


def format_of(key: str) -> str | None:
    """The format a file's name says (FORMATS), or None."""
    name = key.rsplit("/", 1)[-1].lower()
    return FORMATS.get("." + name.rsplit(".", 1)[-1]) if "." in name else None


@dataclass(frozen=True, slots=True)
class SourcePiece:
    """A source file, or the part of one that a partition reads (partitions.py).

    `byte_range` (line formats): the lines whose first byte lies in [start, end), `end`
    None for "to the end of the file". `row_groups` (Parquet): those row groups only.
    Neither: the whole file. `bytes` is the input it stands for (progress, partition sizes).
    """

    file: SourceFile
    byte_range: tuple[int, int | None] | None = None
    row_groups: tuple[int, ...] | None = None
    bytes: int = -1  # -1: the file's listed size

    @property
    def weight(self) -> int:
        return self.file.obj.size if self.bytes < 0 else self.bytes
