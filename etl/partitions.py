"""Partitioned ingest: an input cut into partitions of similar size that run apart, in order.

`plan_partitions` lists the input exactly as `list_sources` does and cuts the listing into
at most `max_partitions` contiguous partitions, each worth at least `target_bytes`: the
concatenation of the partitions' outputs is the unpartitioned output, row for row. Large
line-format files are cut by byte range (the reader aligns to lines, tabular.iter_lines),
Parquet files by row groups (from the footer alone); everything else goes whole. Planning
reads no file body: sizes come from the listing, and only a Parquet file that a cut falls
inside has its footer read. `run_etl_partition` runs one partition's ETL and publishes it as
a dataset of its own; merge.py publishes the parts as one dataset.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aistack.etl.errors import EtlError, InputProblem
from aistack.etl.job import EtlOptions, EtlSummary, ProgressFn, run_pieces
from aistack.etl.loaders import LoaderOptions, confinement_root, list_sources
from aistack.etl.merge import merge_datasets
from aistack.etl.records import SourceFile, SourcePiece, format_of
from aistack.etl.storage import LocalStorage, Storage, StoredObject, open_storage
from aistack.etl.tabular import is_text_type

__all__ = [
    "PLAN_FORMAT",
    "Partition",
    "PartitionItem",
    "merge_datasets",
    "plan_from_json",
    "plan_partitions",
    "plan_to_json",
    "read_plan",
    "run_etl_partition",
    "write_plan",
]

PLAN_FORMAT = "aistack.partitions/v1"
PLAN_FILE = "partitions.json"
DEFAULT_TARGET_BYTES = 64 * 2**20
# A cut closer than this fraction of a partition's share to a file's edge moves to the edge:
# a sliver of a file is not worth a range of its own.
SNAP_FRACTION = 1 / 16


@dataclass(frozen=True, slots=True)
class PartitionItem:
    """One listed entry, or the piece of one, that a partition reads."""

    key: str  # relative to the partition's root, as listed
    size: int  # the entry's listed size
    format: str | None  # FORMATS' name for the key's extension (None: not a supported format)
    problem: tuple[str, str] | None = None  # (reason, message) from the listing, e.g. duplicate_of
    byte_range: tuple[int, int | None] | None = None  # jsonl: lines starting in [start, end)
    row_groups: tuple[int, ...] | None = None  # parquet: these row groups
    bytes: int = 0  # the input this item stands for (the whole size, or the piece's share)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "size": self.size,
            "format": self.format,
            "problem": None
            if self.problem is None
            else {"reason": self.problem[0], "message": self.problem[1]},
            "byte_range": None if self.byte_range is None else list(self.byte_range),
            "row_groups": None if self.row_groups is None else list(self.row_groups),
            "bytes": self.bytes,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> PartitionItem:
        if not isinstance(data, dict):
            raise EtlError(f"{where}: expected an object, got {type(data).__name__}")
        key = _field(data, "key", str, where)
        size = _field(data, "size", int, where)
        fmt = data.get("format")
        expected = format_of(key)
        if fmt != expected:
            raise EtlError(f"{where}.format: {fmt!r}, but a file named {key!r} is {expected!r}")
        problem = data.get("problem")
        if problem is not None:
            if not isinstance(problem, dict):
                raise EtlError(f"{where}.problem: expected an object or null")
            problem = (
                _field(problem, "reason", str, f"{where}.problem"),
                _field(problem, "message", str, f"{where}.problem"),
            )
        byte_range = data.get("byte_range")
        if byte_range is not None:
            ok = (
                fmt == "jsonl"
                and isinstance(byte_range, list)
                and len(byte_range) == 2
                and _is_int(byte_range[0])
                and byte_range[0] >= 0
                and (byte_range[1] is None or (_is_int(byte_range[1]) and byte_range[1] > byte_range[0]))
            )
            if not ok:
                raise EtlError(
                    f"{where}.byte_range: {byte_range!r} is not [start, end|null] of a .jsonl file"
                )
            byte_range = (byte_range[0], byte_range[1])
        groups = data.get("row_groups")
        if groups is not None:
            ok = fmt == "parquet" and isinstance(groups, list) and groups and all(_is_int(g) for g in groups)
            if not ok or groups != sorted(set(groups)) or groups[0] < 0:
                raise EtlError(
                    f"{where}.row_groups: {groups!r} is not ascending row groups of a .parquet file"
                )
            groups = tuple(groups)
        if byte_range is not None and groups is not None:
            raise EtlError(f"{where}: an item has a byte range or row groups, not both")
        return cls(key, size, fmt, problem, byte_range, groups, _field(data, "bytes", int, where))


@dataclass(frozen=True, slots=True)
class Partition:
    """A contiguous run of the listing: what one ingest pod reads. JSON-serialisable."""

    index: int
    root: str  # the storage URI the items' keys are relative to
    items: tuple[PartitionItem, ...]
    confine_root: str | None = None  # the resolved input root each local file must lie in

    @property
    def name(self) -> str:
        """`part-00000`: where this partition's dataset goes, under the merged dataset."""
        return f"part-{self.index:05d}"

    @property
    def bytes(self) -> int:
        return sum(item.bytes for item in self.items)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "index": self.index,
            "root": self.root,
            "confine_root": self.confine_root,
            "items": [item.to_dict() for item in self.items],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, where: str = "partition") -> Partition:
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise EtlError(f"{where}: not an aistack partition (format {PLAN_FORMAT!r} expected)")
        index = _field(data, "index", int, where)
        root = _field(data, "root", str, where)
        confine = data.get("confine_root")
        if confine is not None and not isinstance(confine, str):
            raise EtlError(f"{where}.confine_root: expected a string or null")
        items = data.get("items")
        if not isinstance(items, list):
            raise EtlError(f"{where}.items: expected a list")
        parsed = tuple(PartitionItem.from_dict(item, f"{where}.items[{i}]") for i, item in enumerate(items))
        if isinstance(open_storage(root), LocalStorage):  # a key is a path under the root, never out of it
            for i, item in enumerate(parsed):
                if not item.key or item.key.startswith("/") or ".." in item.key.split("/"):
                    raise EtlError(f"{where}.items[{i}].key: {item.key!r} is not a path inside {root}")
        return cls(index, root, parsed, confine)

    @classmethod
    def from_json(cls, text: str | bytes) -> Partition:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EtlError(f"partition: not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def pieces(self, confine_to: str | Path | None = None) -> list[SourcePiece]:
        """The loader's view of the items. `confine_to` (the options' input root) wins over the
        root recorded at planning; either way every local file is checked against it on open."""
        storage = open_storage(self.root)
        if isinstance(storage, LocalStorage):
            confined = confinement_root(self.root, confine_to) if confine_to is not None else None
            storage.confine_root = confined or self.confine_root
        elif confine_to is not None:
            confinement_root(self.root, confine_to)  # S3: the prefix must lie inside it, else refused
        return [_piece(storage, item) for item in self.items]


def _piece(storage: Storage, item: PartitionItem) -> SourcePiece:
    problem = None if item.problem is None else InputProblem(*item.problem)
    obj = StoredObject(item.key, item.size, problem)
    return SourcePiece(SourceFile(storage, obj), item.byte_range, item.row_groups, item.bytes)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field(data: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EtlError(f"{where}.{name}: expected {kind.__name__}, got {value!r}")
    if kind is int and value < 0:
        raise EtlError(f"{where}.{name}: expected a non-negative integer, got {value}")
    return value


# -- planning ---------------------------------------------------------------------------------


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
                    (self.position + start, _replace(item, byte_range=(start, end), bytes=share))
                )
        else:  # a Parquet file: the edges are where its row groups start
            groups = [0, *(edges.index(c) + 1 for c in inner), len(edges) + 1]
            offsets = [0, *inner, size]
            for i in range(len(groups) - 1):
                rows = tuple(range(groups[i], groups[i + 1]))
                share = offsets[i + 1] - offsets[i]
                self.pieces.append((self.position + offsets[i], _replace(item, row_groups=rows, bytes=share)))
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


def _replace(item: PartitionItem, **changes: Any) -> PartitionItem:
    data = {name: getattr(item, name) for name in PartitionItem.__slots__}  # type: ignore[attr-defined]
    return PartitionItem(**{**data, **changes})


def _row_group_edges(source: SourceFile, loader: LoaderOptions) -> list[int]:
    """Offsets in the file where row groups 1.. start, from the footer alone; none if the file
    will be rejected whole (unreadable footer, no text column, not a string column)."""
    import pyarrow.parquet as pq

    try:
        with source.storage.open_ranged(source.obj.key, source.obj.size) as fh:
            pf = pq.ParquetFile(fh)
            schema, meta = pf.schema_arrow, pf.metadata
    except Exception:  # the loader reads it whole and reports what is wrong, once
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
    if not _is_int(max_partitions) or max_partitions < 1:
        raise ValueError(f"max_partitions must be a positive integer, got {max_partitions!r}")
    if not _is_int(target_bytes) or target_bytes < 1:
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


# -- the plan as one JSON file --------------------------------------------------------------------


def plan_to_json(partitions: Iterable[Partition]) -> str:
    return json.dumps(
        {"format": PLAN_FORMAT, "partitions": [p.to_dict() for p in partitions]}, sort_keys=True
    )


def plan_from_json(text: str | bytes, where: str = "partition plan") -> list[Partition]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EtlError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise EtlError(f"{where}: not an aistack partition plan (format {PLAN_FORMAT!r} expected)")
    parts = data.get("partitions")
    if not isinstance(parts, list) or not parts:
        raise EtlError(f"{where}.partitions: expected a non-empty list")
    plan = [Partition.from_dict(p, f"{where}.partitions[{i}]") for i, p in enumerate(parts)]
    if [p.index for p in plan] != list(range(len(plan))):
        raise EtlError(f"{where}: partition indexes are not 0..{len(plan) - 1} in order")
    return plan


def write_plan(uri: str, partitions: list[Partition]) -> str:
    """Store the plan as `partitions.json` under `uri`; returns the file's URI."""
    storage = open_storage(uri)
    storage.write_bytes(PLAN_FILE, plan_to_json(partitions).encode())
    return storage.child(PLAN_FILE)


def read_plan(uri: str) -> list[Partition]:
    """The plan `write_plan` stored under `uri`."""
    storage = open_storage(uri)
    if not storage.exists(PLAN_FILE):
        raise EtlError(f"no partition plan at {uri}: {PLAN_FILE} is missing (did the plan step run?)")
    return plan_from_json(storage.read_bytes(PLAN_FILE), storage.child(PLAN_FILE))
