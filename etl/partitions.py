"""Partitioned ingest: an input cut into partitions of similar size that run apart, in order.

`plan_partitions` lists the input exactly as `list_sources` does and cuts the listing into
at most `max_partitions` contiguous partitions, each worth at least `target_bytes`: the
concatenation of the partitions' outputs is the unpartitioned output, row for row. Large
line-format files are cut by byte range (the reader aligns to lines, tabular.iter_lines),
Parquet files by row groups (from the footer alone); everything else goes whole. Planning
reads no file body: sizes come from the listing, and only a Parquet file that a cut falls
inside has its footer read. `run_etl_partition` runs one partition's ETL and publishes it as
a dataset of its own; `merge_datasets` (merge.py) publishes the parts as one dataset. The
plan's data and its JSON file are in partition_plan.py; this module exports all of it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from aistack.etl.errors import EtlError
from aistack.etl.job import EtlOptions, EtlSummary, ProgressFn, run_pieces
from aistack.etl.loaders import LoaderOptions, list_sources
from aistack.etl.merge import merge_datasets
from aistack.etl.partition_plan import (
    PLAN_FORMAT,
    Partition,
    PartitionItem,
    is_count,
    partition_count,
    partition_name,
    plan_from_json,
    plan_to_json,
    read_partition,
    read_plan,
    write_partitions,
    write_plan,
)
from aistack.etl.records import SourceFile
from aistack.etl.storage import LocalStorage
from aistack.etl.tabular import is_text_type

__all__ = [
    "PLAN_FORMAT",
    "Partition",
    "PartitionItem",
    "merge_datasets",
    "partition_count",
    "partition_name",
    "plan_from_json",
    "plan_partitions",
    "plan_to_json",
    "read_partition",
    "read_plan",
    "run_etl_partition",
    "write_partitions",
    "write_plan",
]

DEFAULT_TARGET_BYTES = 64 * 2**20
# A cut closer than this fraction of a partition's share to a file's edge moves to the edge:
# a sliver of a file is not worth a range of its own.
SNAP_FRACTION = 1 / 16


@dataclass(slots=True)
class _Cutter:
    """Cuts the listing at the targets: item pieces, and the positions where partitions end."""

    targets: list[float]
    snap: float
    loader: LoaderOptions
    pieces: list[tuple[int, PartitionItem]] = field(default_factory=list)  # (start position, piece)
    bounds: list[int] = field(default_factory=list)
    position: int = 0
    _next: int = 0  # the first target not placed yet

    def add(self, source: SourceFile) -> None:
        size = 0 if source.obj.problem is not None else source.obj.size  # not read: weighs nothing
        inside: list[float] = []
        while self._next < len(self.targets) and self.targets[self._next] < self.position + size:
            inside.append(self.targets[self._next] - self.position)
            self._next += 1
        item = _item(source)
        if not inside:
            self._whole(item)
            return
        edges = self._edges(source)  # offsets inside the file where it may be cut (None: any)
        cuts = sorted({self._nearest(t, size, edges) for t in inside})
        self.bounds.extend(self.position + c for c in cuts)
        inner = [c for c in cuts if 0 < c < size]
        if not inner:
            self._whole(item)
            return
        if edges is None:  # a line file: byte ranges
            starts = [0, *inner]
            for i, start in enumerate(starts):
                end = starts[i + 1] if i + 1 < len(starts) else None
                share = (end if end is not None else size) - start
                self.pieces.append(
                    (self.position + start, dataclasses.replace(item, byte_range=(start, end), bytes=share))
                )
        else:  # a Parquet file: the edges are where its row groups start
            groups = [0, *(edges.index(c) + 1 for c in inner), len(edges) + 1]
            offsets = [0, *inner, size]
            for i in range(len(groups) - 1):
                rows = tuple(range(groups[i], groups[i + 1]))
                share = offsets[i + 1] - offsets[i]
                self.pieces.append(
                    (self.position + offsets[i], dataclasses.replace(item, row_groups=rows, bytes=share))
                )
        self.position += size

    def _whole(self, item: PartitionItem) -> None:
        self.pieces.append((self.position, item))
        self.position += item.bytes

    def _nearest(self, target: float, size: int, edges: list[int] | None) -> int:
        """The cut offset for a target: the nearest allowed edge (a file's own edges included)."""
        if edges is None:  # any byte (a line file): the target itself, unless a sliver
            cut = round(target)
            if cut < self.snap or size - cut < self.snap:
                return 0 if cut < size - cut else size
            return cut
        return min([0, *edges, size], key=lambda e: (abs(e - target), e))

    def _edges(self, source: SourceFile) -> list[int] | None:
        """None for "at any byte" (JSONL), row-group starts (Parquet), else none."""
        if source.obj.problem is not None:
            return []
        if source.format == "jsonl":
            return None
        if source.format == "parquet":
            return _row_group_edges(source, self.loader)
        # CSV is never cut: a quoted field may hold newlines, so a byte offset does not tell
        # whether it starts a record without reading from the file's start. Text, Markdown
        # and HTML are whole documents: one file is one document.
        return []


def _item(source: SourceFile) -> PartitionItem:
    obj = source.obj
    if obj.problem is None:
        return PartitionItem(obj.key, obj.size, source.format, bytes=obj.size)
    return PartitionItem(obj.key, obj.size, source.format, (obj.problem.reason, str(obj.problem)), bytes=0)


def _row_group_edges(source: SourceFile, loader: LoaderOptions) -> list[int]:
    """Offsets in the file where row groups 1.. start, from the footer alone; none if the file
    will be rejected whole (unreadable footer, no text column, not a string column)."""
    try:
        with source.storage.open_ranged(source.obj.key, source.obj.size) as fh:
            pf = pq.ParquetFile(fh)
            schema, meta = pf.schema_arrow, pf.metadata
    except (EtlError, OSError, pa.ArrowException):  # the loader reads it whole and reports it, once
        return []
    name = loader.text_field
    if name not in schema.names or not is_text_type(schema.field(name).type):
        return []
    edges, position = [], 4  # after the magic number "PAR1"
    for g in range(meta.num_row_groups - 1):
        group = meta.row_group(g)
        position += sum(group.column(c).total_compressed_size for c in range(group.num_columns))
        edges.append(min(position, source.obj.size))
    return edges


def plan_partitions(
    source: str,
    max_partitions: int,
    *,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    confine_to: str | Path | None = None,
    loader: LoaderOptions | None = None,
) -> list[Partition]:
    """At most `max_partitions` contiguous partitions of `source`'s listing, of similar size.

    Each is worth at least `target_bytes` (a small input is one partition). `confine_to`
    (else `loader.confine_to`) is the input root, as for `list_sources`; `loader.text_field`
    says which Parquet files can be cut by row group (those that have that text column).
    """
    if not is_count(max_partitions) or max_partitions < 1:
        raise ValueError(f"max_partitions must be a positive integer, got {max_partitions!r}")
    if not is_count(target_bytes) or target_bytes < 1:
        raise ValueError(f"target_bytes must be a positive integer, got {target_bytes!r}")
    loader = loader or LoaderOptions()
    confine = confine_to if confine_to is not None else loader.confine_to
    sources = list_sources(source, confine)
    storage = sources[0].storage
    confine_root = storage.confine_root if isinstance(storage, LocalStorage) else None
    total = sum(s.obj.size for s in sources if s.obj.problem is None)
    count = max(1, min(max_partitions, total // target_bytes))
    share = total / count
    cutter = _Cutter([share * k for k in range(1, count)], share * SNAP_FRACTION, loader)
    for s in sources:
        cutter.add(s)
    groups: list[list[PartitionItem]] = [[] for _ in range(len(cutter.bounds) + 1)]
    at = 0
    for start, item in cutter.pieces:
        while at < len(cutter.bounds) and cutter.bounds[at] <= start:
            at += 1
        groups[at].append(item)
    chosen = [g for g in groups if g]
    return [Partition(i, storage.uri, tuple(items), confine_root) for i, items in enumerate(chosen)]


def run_etl_partition(
    partition: Partition, out: str, options: EtlOptions | None = None, progress: ProgressFn | None = None
) -> EtlSummary:
    """The ETL of one partition's items, published at `out` as a dataset, as `run_etl` does."""
    options = options or EtlOptions()
    return run_pieces(partition.pieces(options.loader.confine_to), out, options, progress)
