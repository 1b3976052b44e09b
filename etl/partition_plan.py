"""A partition plan as data: what each ingest pod reads, JSON-serialisable and checked.

A `Partition` lists its items (a listed entry, or the piece of one: a byte range of a line
file, row groups of a Parquet file) under one storage root. The plan step stores each
partition in a JSON file of its own (`write_partitions`), so an ingest pod reads only its own
(`read_partition`); `write_plan` stores a whole plan as one file. What is read back is
checked field by field, so a file that is not a plan (or a key that climbs out of the root)
is refused with the field named, never read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aistack.etl.errors import EtlError, InputProblem
from aistack.etl.loaders import confinement_root
from aistack.etl.records import SourceFile, SourcePiece, format_of
from aistack.etl.storage import LocalStorage, Storage, StoredObject, open_storage

PLAN_FORMAT = "aistack.partitions/v1"
PLAN_FILE = "partitions.json"


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
                and is_count(byte_range[0])
                and byte_range[0] >= 0
                and (byte_range[1] is None or (is_count(byte_range[1]) and byte_range[1] > byte_range[0]))
            )
            if not ok:
                raise EtlError(
                    f"{where}.byte_range: {byte_range!r} is not [start, end|null] of a .jsonl file"
                )
            byte_range = (byte_range[0], byte_range[1])
        groups = data.get("row_groups")
        if groups is not None:
            ok = fmt == "parquet" and isinstance(groups, list) and groups and all(is_count(g) for g in groups)
            if not ok or groups != sorted(set(groups)) or groups[0] < 0:
                raise EtlError(
                    f"{where}.row_groups: {groups!r} is not ascending row groups of a .parquet file"
                )
            groups = tuple(groups)
        if byte_range is not None and groups is not None:
            raise EtlError(f"{where}: an item has a byte range or row groups, not both")
        return cls(key, size, fmt, problem, byte_range, groups, _field(data, "bytes", int, where))


def partition_name(index: int) -> str:
    """`part-00000`: where partition `index`'s dataset goes, under the merged dataset."""
    return f"part-{index:05d}"


@dataclass(frozen=True, slots=True)
class Partition:
    """A contiguous run of the listing: what one ingest pod reads. JSON-serialisable."""

    index: int
    root: str  # the storage URI the items' keys are relative to
    items: tuple[PartitionItem, ...]
    confine_root: str | None = None  # the resolved input root each local file must lie in

    @property
    def name(self) -> str:
        return partition_name(self.index)

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
        # on S3 the check that the prefix lies inside `confine_to` is all: it has no links
        confined = confinement_root(self.root, confine_to) if confine_to is not None else None
        storage = open_storage(self.root, confined or self.confine_root)
        return [_piece(storage, item) for item in self.items]


def _piece(storage: Storage, item: PartitionItem) -> SourcePiece:
    problem = None if item.problem is None else InputProblem(*item.problem)
    obj = StoredObject(item.key, item.size, problem)
    return SourcePiece(SourceFile(storage, obj), item.byte_range, item.row_groups, item.bytes)


def is_count(value: object) -> bool:
    """An int that is not a bool (JSON and Python both let True pass for 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _field(data: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EtlError(f"{where}.{name}: expected {kind.__name__}, got {value!r}")
    if kind is int and value < 0:
        raise EtlError(f"{where}.{name}: expected a non-negative integer, got {value}")
    return value


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


def _partition_key(index: int) -> str:
    return f"plan/{partition_name(index)}.json"


def write_partitions(uri: str, partitions: list[Partition]) -> None:
    """Each partition in a file of its own (`plan/part-N.json` under `uri`), then their count: a
    reader of one partition reads only its own, whatever the input's number of files."""
    storage = open_storage(uri)
    for partition in partitions:
        storage.write_bytes(_partition_key(partition.index), partition.to_json().encode())
    storage.write_bytes("plan/count.json", json.dumps({"partitions": len(partitions)}).encode())


def partition_count(uri: str) -> int:
    storage = open_storage(uri)
    if not storage.exists("plan/count.json"):
        raise EtlError(f"no partition plan at {uri}: plan/count.json is missing (did the plan step run?)")
    return int(json.loads(storage.read_bytes("plan/count.json"))["partitions"])


def read_partition(uri: str, index: int) -> Partition:
    """Partition `index` of the plan `write_partitions` stored under `uri`."""
    storage = open_storage(uri)
    key = _partition_key(index)
    if not 0 <= index < partition_count(uri) or not storage.exists(key):
        raise EtlError(f"no partition {index} in the plan at {uri}")
    return Partition.from_json(storage.read_bytes(key))


def read_plan(uri: str) -> list[Partition]:
    """The plan `write_plan` stored under `uri`."""
    storage = open_storage(uri)
    if not storage.exists(PLAN_FILE):
        raise EtlError(f"no partition plan at {uri}: {PLAN_FILE} is missing (did the plan step run?)")
    return plan_from_json(storage.read_bytes(PLAN_FILE), storage.child(PLAN_FILE))
