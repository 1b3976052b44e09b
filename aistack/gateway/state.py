"""The local gateway's task records: one JSON file per task under `--state-dir`, written durably.

A write goes to a temporary file beside the record, is fsynced, renamed over the record and the
directory is fsynced, so after a crash or power loss a record is the old one or the new one,
never half of either. A file that still cannot be read (truncated by a full disk, edited by
hand, not a regular file) is moved aside as `<name>.corrupt-<time>` and logged by name; the
gateway starts with every other record."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

from aistack.etl.storage import LocalStorage

log = logging.getLogger("aistack.gateway")
Key = tuple[str, str]  # (namespace, name)


class CorruptRecord(ValueError):
    pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RecordStore:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self._files = LocalStorage(root)  # temp file + fsync + rename

    def path(self, key: Key) -> Path:
        return self.root / f"{key[0]}.{key[1]}.json"

    def save(self, key: Key, record: dict[str, Any]) -> None:
        self._files.write_bytes(self.path(key).name, json.dumps(record, indent=1, sort_keys=True).encode())
        _fsync_dir(self.root)  # the rename itself survives a power loss

    def delete(self, key: Key) -> None:
        self.path(key).unlink(missing_ok=True)
        _fsync_dir(self.root)

    def load(self) -> dict[Key, dict[str, Any]]:
        """Every readable record; unreadable ones are moved aside and logged, leftovers of
        writes that never finished (hidden temporary files) are removed."""
        for leftover in self.root.glob(".*.json.*"):  # LocalStorage's temporary files
            if leftover.is_file():
                log.warning("removing %s: a record write that never finished", leftover)
                leftover.unlink(missing_ok=True)
        records: dict[Key, dict[str, Any]] = {}
        for path in sorted(self.root.glob("*.json")):
            try:
                key, record = self._read(path)
            except CorruptRecord as e:
                self._quarantine(path, str(e))
                continue
            records[key] = record
        return records

    def _read(self, path: Path) -> tuple[Key, dict[str, Any]]:
        try:
            if not stat.S_ISREG(path.lstat().st_mode):  # a FIFO would block the read for ever
                raise CorruptRecord("not a regular file")
            record = json.loads(path.read_bytes())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptRecord(f"{type(e).__name__}: {e}") from e
        meta = record.get("metadata") if isinstance(record, dict) else None
        if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in ("namespace", "name")):
            raise CorruptRecord("not a task record (no metadata.namespace and metadata.name)")
        if not isinstance(record.get("status", {}), dict) or not isinstance(record.get("spec"), dict):
            raise CorruptRecord("not a task record (spec or status is not an object)")
        key = (meta["namespace"], meta["name"])
        if self.path(key).name != path.name:
            raise CorruptRecord(f"holds task {key[0]}/{key[1]}, whose record is {self.path(key).name}")
        return key, record

    def _quarantine(self, path: Path, reason: str) -> None:
        stem = f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        aside, n = path.with_name(stem), 1
        while aside.exists():
            aside, n = path.with_name(f"{stem}-{n}"), n + 1
        try:
            path.rename(aside)
        except OSError as e:
            log.error("skipping unreadable task record %s (%s); cannot move it aside: %s", path, reason, e)
            return
        with contextlib.suppress(OSError):
            _fsync_dir(self.root)
        log.error("skipping unreadable task record %s (%s); moved it to %s", path, reason, aside.name)
