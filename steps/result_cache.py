"""The result cache: model answers kept as Parquet segments under a storage URI (local or s3://).

A call's key is a hash of (model digest, prompt hash, options, input hash, format): a re-run over
unchanged data asks no model. Entries live in *segments* that follow the stage's own work: map
shard s writes segment (`<stage>/shard-s-of-S`, k) for its part k, a reduce level its parts, and
so on. A stage opens the segment of the part it is about to run (one read), looks every key up in
memory, and writes the part's new entries back as one file: a fully cached re-run of N records
costs about N / PART_ROWS storage requests, not two per record.

Reading a segment merges every file it has (normally one); writing one stores the entries the part
used or added and then removes the files it read, so segments do not grow with the number of runs.
Two runs writing one segment at once each keep a file; the next reader merges both. Tasks sharing a
cache URI and a stage name share its segments: correct, but each run keeps only its own answers.
An unreadable file is a miss (recomputed and rewritten), never an error.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from aistack.etl.errors import StorageError
from aistack.etl.storage import Storage, open_storage

log = logging.getLogger(__name__)

SEGMENTS = "v2"  # the layout's version (v1 was one JSON object per key)
ENTRY = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("content", pa.large_string(), nullable=False),
        pa.field("prompt_tokens", pa.int64(), nullable=False),
        pa.field("eval_tokens", pa.int64(), nullable=False),
        pa.field("total_duration_ns", pa.int64(), nullable=False),
        pa.field("load_duration_ns", pa.int64(), nullable=False),
        pa.field("prompt_eval_duration_ns", pa.int64(), nullable=False),
        pa.field("eval_duration_ns", pa.int64(), nullable=False),
        pa.field("done_reason", pa.string(), nullable=False),
    ]
)
FIELDS = [f.name for f in ENTRY if f.name != "key"]


@dataclass
class Segment:
    """One segment's entries in memory while its part runs: `get` and `put` are dict operations."""

    cache: ResultCache
    scope: str
    index: int
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    added: dict[str, dict[str, Any]] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)  # entries this part asked for
    files: list[str] = field(default_factory=list)  # the files it was read from (replaced on save)

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self.added:
            return self.added[key]
        found = self.entries.get(key)
        if found is not None:
            self.used.add(key)
        return found

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.added[key] = value

    def save(self) -> None:
        """Write this part's answers (the old ones it used and the new ones) as one file, then drop
        the files it read: entries no run asks for any more fall away, so a segment holds one
        part's worth whatever the history."""
        if not self.added:
            return
        merged = {**{k: self.entries[k] for k in self.used}, **self.added}
        columns: dict[str, list[Any]] = {"key": list(merged)}
        for name in FIELDS:
            columns[name] = [entry[name] for entry in merged.values()]
        key = f"{self.cache.directory(self.scope, self.index)}/{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        with self.cache.storage.writer(key) as sink:
            pq.write_table(pa.Table.from_pydict(columns, schema=ENTRY), sink, compression="zstd")
        self.cache.stats["writes"] += 1
        for old in self.files:
            try:
                self.cache.storage.delete(old)
            except StorageError:  # another writer's file, or gone already: the next reader merges
                log.info("could not remove superseded cache file %s", old)
        self.entries, self.added, self.used, self.files = merged, {}, set(merged), [key]
        self.cache.saved(self.scope, self.index, key)


class ResultCache:
    """Segments of model answers under `uri`; `refresh` ignores what is there (and rewrites it)."""

    def __init__(self, uri: str, refresh: bool = False) -> None:
        self.uri = uri
        self.refresh = refresh
        self.storage: Storage = open_storage(uri)
        self.stats: dict[str, int] = {"reads": 0, "writes": 0, "lists": 0}
        self._listing: dict[str, dict[int, list[str]]] = {}  # scope -> index -> files, listed once
        self._lock = threading.Lock()

    @staticmethod
    def directory(scope: str, index: int) -> str:
        return f"{SEGMENTS}/{scope}/{index:06d}"

    def _files(self, scope: str, index: int) -> list[str]:
        with self._lock:
            if scope not in self._listing:
                self.stats["lists"] += 1
                found: dict[int, list[str]] = {}
                try:
                    for obj in self.storage.list(f"{SEGMENTS}/{scope}"):
                        parts = obj.key.split("/")
                        if obj.key.endswith(".parquet") and parts[-2].isdigit():
                            found.setdefault(int(parts[-2]), []).append(obj.key)
                except StorageError as exc:
                    log.warning("cannot list the cache at %s (%s): every call is a miss", self.uri, exc)
                self._listing[scope] = found
            return sorted(self._listing[scope].get(index, []))

    def saved(self, scope: str, index: int, key: str) -> None:
        """A segment was written: later readers in this process find it without listing again."""
        with self._lock:
            if scope in self._listing:
                self._listing[scope][index] = [key]

    def segment(self, scope: str, index: int) -> Segment:
        """The segment's entries, read from its files (not read when refreshing: the files are only
        replaced)."""
        segment = Segment(self, scope, index)
        files = self._files(scope, index)
        for key in [] if self.refresh else files:
            try:
                self.stats["reads"] += 1
                table = pq.read_table(pa.BufferReader(self.storage.read_bytes(key)))
            except (StorageError, OSError, pa.ArrowException) as exc:
                log.warning("unreadable cache file %s (%s): its entries are misses", key, exc)
                continue
            for row in table.to_pylist():
                segment.entries[row.pop("key")] = row
        segment.files = files
        return segment
