"""One dataset from the datasets of an input's partitions: a manifest that lists their files.

Nothing is copied: each partition published its own dataset under the merged one (e.g.
`<run>/etl/part-00000/`), and the merged `_manifest.json` lists every part's files by keys
relative to the merged root, so `read_manifest`, `iter_table` and `read_table` read the whole
corpus through it. The summaries are added up and `in = out + rejected` is checked over the
total before anything is written; the manifest is written last (a failed merge leaves no new
manifest) and depends only on the parts, so a retried merge writes the same manifest again.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from aistack.etl.errors import EtlError
from aistack.etl.parquet_io import MANIFEST, MANIFEST_FORMAT, read_manifest_of, replace_manifest
from aistack.etl.schemas import content_hash
from aistack.etl.storage import open_storage

TABLES = ("documents", "chunks", "rejected")
COUNTS = ("records_in", "documents", "chunks", "tokens", "bytes_in")
COUNTERS = ("rejected", "skipped")
# a table's rows in a partition, against the summary's count of them
TABLE_COUNTS = {"documents": "documents", "chunks": "chunks"}


def _number(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise EtlError(f"{what}: expected a non-negative integer, got {value!r}")
    return value


def _part_summary(uri: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """The part's summary, checked against itself and against its tables' row counts."""
    summary = manifest.get("summary")
    if not isinstance(summary, dict):
        raise EtlError(f"partition dataset {uri} has no summary in its {MANIFEST}")
    counts = {k: _number(summary.get(k), f"{uri} summary.{k}") for k in COUNTS}
    counters: dict[str, Counter[str]] = {}
    for name in COUNTERS:
        value = summary.get(name, {})
        if not isinstance(value, dict):
            raise EtlError(f"{uri} summary.{name}: expected an object of counts")
        counters[name] = Counter({k: _number(v, f"{uri} summary.{name}.{k}") for k, v in value.items()})
    rejected = sum(counters["rejected"].values())
    if counts["records_in"] != counts["documents"] + rejected:
        raise EtlError(
            f"partition dataset {uri}: in = out + rejected does not hold "
            f"({counts['records_in']} != {counts['documents']} + {rejected})"
        )
    tables = manifest.get("tables")
    if not isinstance(tables, dict) or any(t not in tables for t in TABLES):
        raise EtlError(f"partition dataset {uri} lacks a table: it needs {', '.join(TABLES)}")
    expected = {**{t: counts[c] for t, c in TABLE_COUNTS.items()}, "rejected": rejected}
    for table, rows in expected.items():
        if tables[table].get("rows") != rows:
            raise EtlError(
                f"partition dataset {uri}: table {table!r} has {tables[table].get('rows')!r} rows, "
                f"its summary says {rows}"
            )
    seconds = summary.get("seconds", 0)
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        raise EtlError(f"{uri} summary.seconds: expected a number, got {seconds!r}")
    return {**counts, **counters, "seconds": float(seconds)}


def merge_datasets(parts: list[str], out: str) -> dict[str, Any]:
    """Publish at `out` one dataset of the partition datasets `parts` (each inside `out`), in
    order; returns its manifest. A missing or inconsistent part is an EtlError naming it."""
    if not parts:
        raise EtlError(f"nothing to merge into {out}: no partition datasets given")
    target = open_storage(out)
    base = target.uri.rstrip("/") + "/"
    tables: dict[str, dict[str, Any]] = {}
    total: dict[str, Any] = {k: 0 for k in COUNTS} | {k: Counter() for k in COUNTERS} | {"seconds": 0.0}
    prefixes: list[str] = []
    run_ids: list[str] = []
    for uri in parts:
        storage = open_storage(uri)
        prefix = storage.uri[len(base) :] if storage.uri.startswith(base) else ""
        if not prefix or ".." in prefix.split("/"):
            raise EtlError(f"partition dataset {uri} is not inside {target.uri}, the dataset it merges into")
        if prefix in prefixes:
            raise EtlError(f"partition dataset {uri} is listed twice")
        if not storage.exists(MANIFEST):
            raise EtlError(
                f"partition dataset {uri} is missing: no {MANIFEST} there (did its ingest step finish?)"
            )
        manifest = read_manifest_of(storage)
        summary = _part_summary(uri, manifest)
        for name in TABLES:
            table = manifest["tables"][name]
            merged = tables.setdefault(
                name, {"files": [], "rows": 0, "schema": table.get("schema"), "empty": []}
            )
            if table.get("schema") != merged["schema"]:
                raise EtlError(
                    f"partition dataset {uri}: table {name!r} has schema {table.get('schema')!r}, "
                    f"the others {merged['schema']!r}"
                )
            files = [f"{prefix}/{key}" for key in table.get("files", [])]
            # a part's empty table is one empty file: list it only if every part's is empty
            (merged["files"] if table["rows"] else merged["empty"]).extend(files)
            merged["rows"] += table["rows"]
        for k in COUNTS:
            total[k] += summary[k]
        for k in COUNTERS:
            total[k].update(summary[k])
        total["seconds"] += summary["seconds"]
        prefixes.append(prefix)
        run_ids.append(str(manifest.get("run_id", "")))
    rejected = sum(total["rejected"].values())
    if total["records_in"] != total["documents"] + rejected:
        raise EtlError(
            f"merging into {target.uri}: in = out + rejected does not hold over the partitions "
            f"({total['records_in']} != {total['documents']} + {rejected})"
        )
    for merged in tables.values():
        empty = merged.pop("empty")
        if not merged["files"]:
            merged["files"] = empty[:1]
    manifest = {
        "format": MANIFEST_FORMAT,
        "run_id": "merged-" + content_hash(*prefixes, *run_ids)[:16],
        "parts": prefixes,
        "tables": tables,
        "summary": {
            **{k: total[k] for k in COUNTS},
            **{k: dict(sorted(total[k].items())) for k in COUNTERS},
            "seconds": round(total["seconds"], 3),
            "partitions": len(parts),
        },
    }

    def in_a_partition(key: str, previous: dict[str, Any]) -> bool:  # its own manifest lists it
        return any(key.startswith(p + "/") for p in [*prefixes, *previous.get("parts", [])])

    replace_manifest(target, manifest, keep=in_a_partition)
    return manifest
