"""A stage step's results, written as they come: numbered Parquet parts, then a manifest.

Part k of a group (`map`, or a reduce's `level-N`) holds the rows of that group's work items
[k*size, (k+1)*size) (size: PART_ROWS records, or a reduce's fewer groups), in order, written whole (a temporary file renamed into place, or one
S3 object), so memory holds one part however big the shard, and a restarted pod finds the parts
already done and skips their items: killed at 90%, it does not redo 90%. The manifest, written last
(the etl.parquet_io format), lists every part in order, so readers see all of them or none.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aistack.etl.parquet_io import MANIFEST, MANIFEST_FORMAT, write_empty_table, write_manifest
from aistack.etl.schemas import RESULTS
from aistack.etl.storage import open_storage

PART_ROWS = 2048  # work items per part (about 4 MB of rows): also the unit of the result cache's segments
TOTAL_COLUMNS = ["error", "cached", "prompt_tokens", "eval_tokens", "total_duration_ns"]


@dataclass
class PartTotals:
    rows: int = 0
    errors: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    eval_tokens: int = 0
    call_ns: int = 0  # model time of calls made (cached rows cost none)

    @classmethod
    def of(cls, table: pa.Table) -> PartTotals:
        fresh = table.filter(pc.invert(table.column("cached")))
        return cls(
            rows=table.num_rows,
            errors=table.num_rows - table.column("error").null_count,
            cached=int(pc.sum(table.column("cached").cast(pa.int64())).as_py() or 0),
            prompt_tokens=int(pc.sum(table.column("prompt_tokens")).as_py() or 0),
            eval_tokens=int(pc.sum(table.column("eval_tokens")).as_py() or 0),
            call_ns=int(pc.sum(fresh.column("total_duration_ns")).as_py() or 0),
        )


class ResultParts:
    """The parts of one stage step's results under `uri` (e.g. `<run>/stages/<stage>/shard-3`)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.storage = open_storage(uri)
        self._listed: dict[str, dict[int, str]] | None = None

    @staticmethod
    def key(group: str, index: int) -> str:
        return f"results/{group}/part-{index:05d}.parquet"

    def _parts(self, group: str) -> dict[int, str]:
        if self._listed is None:
            self._listed = {}
            for obj in self.storage.list("results"):
                parts = obj.key.split("/")
                name = parts[-1]
                if (
                    len(parts) == 3
                    and name.startswith("part-")
                    and name.endswith(".parquet")
                    and name[5:-8].isdigit()
                ):
                    self._listed.setdefault(parts[1], {})[int(name[5:-8])] = obj.key
        return self._listed.setdefault(group, {}) if group else {}

    def done(self, group: str) -> dict[int, PartTotals]:
        """The parts of `group` a previous attempt finished without an error row, with their totals.
        A part with errors is done again (its good answers come from the cache): the failure that
        made a retry necessary may be gone."""
        finished = {}
        for index, key in sorted(self._parts(group).items()):
            with self.storage.local_copy(key) as path:
                totals = PartTotals.of(pq.read_table(path, columns=[*TOTAL_COLUMNS]))
            if not totals.errors:
                finished[index] = totals
        return finished

    def write(self, group: str, index: int, rows: list[dict[str, Any]]) -> None:
        key = self.key(group, index)
        with self.storage.writer(key) as sink:
            pq.write_table(pa.Table.from_pylist(rows, schema=RESULTS), sink, compression="zstd")
        self._parts(group)[index] = key

    def read(self, group: str, index: int) -> pa.Table:
        with self.storage.local_copy(self.key(group, index)) as path:
            return pq.read_table(path)

    def rows(self, group: str) -> Iterator[dict[str, Any]]:
        """The rows of a group, part by part (one part in memory at a time)."""
        for index in sorted(self._parts(group)):
            yield from self.read(group, index).to_pylist()

    def groups_in_order(self) -> list[str]:
        self._parts("")
        assert self._listed is not None
        present = [g for g, parts in self._listed.items() if parts]
        levels = sorted((g for g in present if g.startswith("level-")), key=lambda g: int(g[6:]))
        return [g for g in ("map", "chat") if g in present] + levels

    def publish(self, summary: dict[str, Any], rows: int) -> str:
        """The manifest, last: every part of every group, in order (`rows`: how many they hold)."""
        files = [self._parts(g)[i] for g in self.groups_in_order() for i in sorted(self._parts(g))]
        if not files:  # no input at all: still a readable, empty table
            files = [write_empty_table(self.storage, "results/empty/part-00000.parquet", RESULTS)]
        manifest = {
            "format": MANIFEST_FORMAT,
            "run_id": "parts",
            "tables": {"results": {"files": files, "rows": rows, "schema": "results"}},
            "summary": summary,
        }
        write_manifest(self.storage, manifest)
        return self.storage.child(MANIFEST)
