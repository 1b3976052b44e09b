"""Parquet datasets on a storage URI, published atomically.

A dataset is a directory of tables (`documents/`, `chunks/`, ...), each a set of Parquet
part files (zstd, row groups bounded by rows and bytes so memory stays flat), and a
`_manifest.json` written **last**. Readers go through the manifest, so they never see a
partial dataset: a run that dies before publishing leaves the previous dataset intact.
Part names carry the run id, so a re-run never overwrites a part a reader may be using.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from aistack.etl.errors import EtlError, StorageError
from aistack.etl.parquet_ranges import iter_row_group_batches
from aistack.etl.storage import LocalStorage, Storage, open_storage

MANIFEST = "_manifest.json"
MANIFEST_FORMAT = "aistack.dataset/v1"
ROW_GROUP_ROWS = 65_536
ROW_GROUP_BYTES = 8 * 1024 * 1024
# Map shards read `chunks` by row group (iter_row_groups): smaller groups there let a shard
# read close to its share (benchmarks/partitions.py measures the write cost).
TABLE_ROW_GROUP_BYTES = {"chunks": 2 * 1024 * 1024}
PART_BYTES = 512 * 1024 * 1024


class TableWriter:
    """Streams rows of one table into part files; buffers at most one row group."""

    def __init__(
        self, storage: Storage, name: str, schema: pa.Schema, run_id: str, row_group_bytes: int | None = None
    ) -> None:
        self.storage, self.name, self.schema, self.run_id = storage, name, schema, run_id
        self.row_group_bytes = row_group_bytes or TABLE_ROW_GROUP_BYTES.get(name, ROW_GROUP_BYTES)
        self.files: list[str] = []
        self.rows = 0
        self._buffer: dict[str, list[Any]] = {f.name: [] for f in schema}
        self._buffered_rows = 0
        self._buffered_bytes = 0
        self._part_bytes = 0
        self._writer_cm: Any = None
        self._writer: pq.ParquetWriter | None = None

    def append(self, row: dict[str, Any], size_hint: int = 0) -> None:
        for key, column in self._buffer.items():
            column.append(row[key])
        self._buffered_rows += 1
        self._buffered_bytes += size_hint
        if self._buffered_rows >= ROW_GROUP_ROWS or self._buffered_bytes >= self.row_group_bytes:
            self.flush()

    def extend(self, columns: dict[str, list[Any]], size_hint: int = 0) -> None:
        """Append many rows given as columns (each list as long as the others).

        The rows are spread over row groups as they fill (a long document's many chunks do
        not make one oversized group), taking `size_hint / rows` as each row's size.
        """
        rows = len(next(iter(columns.values())))
        per_row = size_hint / rows if rows else 0.0
        start = 0
        while start < rows:
            take = min(rows - start, ROW_GROUP_ROWS - self._buffered_rows)
            if per_row:
                take = min(take, max(1, math.ceil((self.row_group_bytes - self._buffered_bytes) / per_row)))
            whole = start == 0 and take == rows
            for key, column in self._buffer.items():
                column.extend(columns[key] if whole else columns[key][start : start + take])
            self._buffered_rows += take
            self._buffered_bytes += size_hint if whole else round(per_row * take)
            start += take
            if self._buffered_rows >= ROW_GROUP_ROWS or self._buffered_bytes >= self.row_group_bytes:
                self.flush()

    def write_table(self, table: pa.Table) -> None:
        """Append a table of this schema as it is (its row groups are copied, not its rows)."""
        self.flush()
        if not table.num_rows:
            return
        self._open_part()
        assert self._writer is not None
        self._writer.write_table(table.cast(self.schema), row_group_size=ROW_GROUP_ROWS)
        self.rows += table.num_rows
        self._part_bytes += table.nbytes
        if self._part_bytes >= PART_BYTES:
            self._close_part()

    def _open_part(self) -> None:
        if self._writer is None:
            key = f"{self.name}/part-{len(self.files):05d}-{self.run_id}.parquet"
            self._writer_cm = self.storage.writer(key)
            sink = self._writer_cm.__enter__()
            # no min/max statistics for long text: useless for pruning, and the footer keeps
            # them for every row group until the file closes
            stats = [
                f.name
                for f in self.schema
                if f.type not in (pa.large_string(), pa.string()) or f.name.endswith("_id")
            ]
            self._writer = pq.ParquetWriter(sink, self.schema, compression="zstd", write_statistics=stats)
            self.files.append(key)
            self._part_bytes = 0

    def flush(self) -> None:
        if not self._buffered_rows:
            return
        batch = pa.RecordBatch.from_pydict(self._buffer, schema=self.schema)
        self._open_part()
        assert self._writer is not None
        self._writer.write_batch(batch)
        self.rows += self._buffered_rows
        self._part_bytes += self._buffered_bytes
        for column in self._buffer.values():
            column.clear()
        self._buffered_rows = self._buffered_bytes = 0
        if self._part_bytes >= PART_BYTES:
            self._close_part()

    def _close_part(self, exc: BaseException | None = None) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._writer = None
                cm, self._writer_cm = self._writer_cm, None
                if exc is None:
                    cm.__exit__(None, None, None)
                else:
                    cm.__exit__(type(exc), exc, exc.__traceback__)

    def close(self) -> None:
        self.flush()
        self._close_part()
        if not self.files:  # an empty table is still a readable table
            self.files.append(
                write_empty_table(self.storage, f"{self.name}/part-00000-{self.run_id}.parquet", self.schema)
            )

    def abort(self, exc: BaseException) -> None:
        self._close_part(exc)


@dataclass
class DatasetWriter:
    """Writes the tables of one dataset and publishes them with a manifest."""

    uri: str
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        self.storage = open_storage(self.uri)
        self.tables: dict[str, TableWriter] = {}
        # temporary files of a writer that was killed are never renamed into place: sweep them
        self.storage.sweep_temp_files()

    def table(self, name: str, schema: pa.Schema) -> TableWriter:
        self.tables[name] = TableWriter(self.storage, name, schema, self.run_id)
        return self.tables[name]

    def publish(self, summary: dict[str, Any]) -> str:
        """Close every table, then write the manifest; returns the manifest's URI."""
        for table in self.tables.values():
            table.close()
        manifest = {
            "format": MANIFEST_FORMAT,
            "run_id": self.run_id,
            "tables": {
                name: {
                    "files": t.files,
                    "rows": t.rows,
                    "schema": t.schema.metadata[b"aistack.table"].decode(),
                }
                for name, t in self.tables.items()
            },
            "summary": summary,
        }
        replace_manifest(self.storage, manifest)
        return self.storage.child(MANIFEST)

    def abort(self, exc: BaseException) -> None:
        """Close open parts after a failure; no manifest is written, so nothing is visible."""
        for table in self.tables.values():
            with contextlib.suppress(StorageError, OSError):  # the original failure is what gets reported
                table.abort(exc)


def write_empty_table(storage: Storage, key: str, schema: pa.Schema) -> str:
    """An empty part of `schema` at `key` (an empty table is still a readable table); returns `key`."""
    with storage.writer(key) as sink:
        pq.write_table(schema.empty_table(), sink, compression="zstd")
    return key


def write_manifest(storage: Storage, manifest: dict[str, Any]) -> None:
    """Write the dataset's manifest: done last, so a reader sees the old dataset or the new one."""
    storage.write_bytes(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())


def replace_manifest(
    storage: Storage, manifest: dict[str, Any], keep: Callable[[str, dict[str, Any]], bool] | None = None
) -> None:
    """Write `manifest` over the dataset's; then delete the files only the replaced manifest
    listed (nothing reaches them now) unless `keep(key, replaced manifest)` claims them."""
    previous = read_manifest_of(storage) if storage.exists(MANIFEST) else None
    write_manifest(storage, manifest)
    if not previous:
        return
    listed = {key for table in manifest["tables"].values() for key in table["files"]}
    for table in previous.get("tables", {}).values():
        for key in table.get("files", []):
            if key not in listed and not (keep and keep(key, previous)):
                storage.delete(key)


def read_manifest_of(storage: Storage) -> dict[str, Any]:
    """The manifest of the dataset at `storage` (which must have one)."""
    try:
        manifest = json.loads(storage.read_bytes(MANIFEST))
    except json.JSONDecodeError as exc:
        raise EtlError(f"{storage.child(MANIFEST)} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise EtlError(f"{storage.child(MANIFEST)} is not an aistack dataset manifest")
    return manifest


def read_manifest(uri: str) -> dict[str, Any]:
    storage = open_storage(uri)
    if not storage.exists(MANIFEST):
        raise EtlError(f"no published dataset at {uri}: {MANIFEST} is missing (the run did not finish?)")
    return read_manifest_of(storage)


def _table_files(uri: str, name: str) -> tuple[Storage, list[str]]:
    storage = open_storage(uri)
    manifest = read_manifest(uri)
    if name not in manifest["tables"]:
        raise EtlError(f"dataset {uri} has no table {name!r}; it has {sorted(manifest['tables'])}")
    return storage, list(manifest["tables"][name]["files"])


@contextlib.contextmanager
def open_parquet(storage: Storage, key: str) -> Iterator[tuple[pq.ParquetFile, object]]:
    """A Parquet file of a dataset and what it reads: a local path as it is; an S3 object
    through ranged reads, so the footer and the column chunks asked for are all it fetches."""
    if isinstance(storage, LocalStorage):
        with storage.local_copy(key) as path:
            yield pq.ParquetFile(path), path
        return
    with storage.open_ranged(key) as fh:
        yield pq.ParquetFile(fh), fh


def iter_table(uri: str, name: str, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream a published table's record batches (only `columns` are read)."""
    storage, files = _table_files(uri, name)
    for key in files:
        with open_parquet(storage, key) as (pf, fh):
            groups = range(pf.metadata.num_row_groups)
            yield from (batch for _, batch in iter_row_group_batches(pf, fh, groups, columns))


def read_table(uri: str, name: str, columns: list[str] | None = None) -> pa.Table:
    """Read a whole published table (small tables and tests; stream big ones with iter_table)."""
    storage, files = _table_files(uri, name)
    parts = []
    for key in files:
        with open_parquet(storage, key) as (pf, fh):
            if isinstance(fh, Path):  # a local file: pyarrow reads it at its own pace
                parts.append(pq.read_table(fh, columns=columns))
                continue
            groups = range(pf.metadata.num_row_groups)
            batches = [batch for _, batch in iter_row_group_batches(pf, fh, groups, columns)]
            parts.append(pa.Table.from_batches(batches) if batches else pf.read(columns=columns))
    return pa.concat_tables(parts)


def table_row_groups(uri: str, name: str) -> list[tuple[str, int, int]]:
    """(file key, row-group index, rows) of every row group of a published table, in order,
    from the Parquet footers alone."""
    storage, files = _table_files(uri, name)
    groups: list[tuple[str, int, int]] = []
    for key in files:
        with open_parquet(storage, key) as (pf, _):
            meta = pf.metadata
            groups.extend((key, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups))
    return groups


def chunk_row_groups(uri: str) -> list[tuple[str, int, int]]:
    """The row groups of a dataset's `chunks` table: what map shards are assigned."""
    return table_row_groups(uri, "chunks")


def iter_row_groups(
    uri: str, table: str, slices: Sequence[tuple[str, int] | tuple[str, int, int]], columns: list[str] | None
) -> Iterator[pa.RecordBatch]:
    """The record batches of exactly these row groups ((file key, row group), e.g. from
    `table_row_groups`), in the order given, with only `columns` read. On S3 only the
    footers and those column chunks are fetched."""
    storage, files = _table_files(uri, table)
    known = set(files)
    for key, group in itertools.groupby(slices, key=lambda s: s[0]):
        if key not in known:
            raise EtlError(f"{key!r} is not a file of table {table!r} of the dataset at {uri}")
        with open_parquet(storage, key) as (pf, fh):
            count = pf.metadata.num_row_groups
            indexes = [piece[1] for piece in group]
            for index in indexes:
                if not 0 <= index < count:
                    raise EtlError(
                        f"{storage.child(key)} has {count} row groups; there is no row group {index}"
                    )
            yield from (batch for _, batch in iter_row_group_batches(pf, fh, indexes, columns))
