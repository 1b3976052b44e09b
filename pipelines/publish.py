"""The publish step: every stage's results into one `results` table at `<outputTarget>/<run id>/`,
with `summary.json`. Row groups are copied with pyarrow and totals computed with pyarrow compute,
so publishing costs one row group of memory whatever the run's size; the manifest is written
last (etl.parquet_io), so readers see the previous outputs or the new ones, never a mix."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from aistack.crds.models import TaskOrchestrationSpec
from aistack.etl.parquet_io import DatasetWriter, iter_table, read_manifest
from aistack.etl.schemas import RESULTS
from aistack.etl.storage import open_storage
from aistack.steps.model_names import full_name
from aistack.steps.result_parts import PartTotals

MAX_OUTPUTS = 20  # final answers copied into summary.json (all of them are in `results`)


def publish_run(task: TaskOrchestrationSpec, run: str, run_id: str, stages: dict[str, list[str]]) -> str:
    """`stages`: each stage's shard datasets, in pipeline order. Returns the step's result JSON."""
    target = f"{task.output_target.rstrip('/')}/{run_id}"
    final_stages = set(task.final_stages())
    dataset = DatasetWriter(target)
    results = dataset.table("results", RESULTS)
    totals: dict[str, Any] = {
        "stages": {},
        "prompt_tokens": 0,
        "eval_tokens": 0,
        "calls_cached": 0,
        "errors": 0,
    }
    outputs: list[str] = []
    models: dict[str, dict[str, Any]] = {}  # what answered for each model asked for
    for stage, shard_uris in stages.items():
        counts = {"rows": 0, "errors": 0, "prompt_tokens": 0, "eval_tokens": 0, "cached": 0}
        for uri in shard_uris:
            # row group by row group: a part of PART_ROWS rows is one batch (up to 65,536 rows)
            for batch in iter_table(uri, "results"):
                group = pa.Table.from_batches([batch])
                results.write_table(group)
                part = PartTotals.of(group)
                for column in counts:
                    counts[column] += getattr(part, column)
                served = (
                    group.select(["model", "served_model", "engine"])
                    .group_by(["model", "served_model", "engine"])
                    .aggregate([])
                )
                for row in served.to_pylist():
                    if row["served_model"]:
                        models[row["model"]] = {
                            "served_by": row["served_model"],
                            "engine": row["engine"],
                            "stand_in": full_name(row["model"]) != row["served_model"],
                        }
                if stage in final_stages and len(outputs) < MAX_OUTPUTS:
                    answered = group.filter(pc.and_(group.column("final"), pc.is_null(group.column("error"))))
                    outputs += answered.column("response").to_pylist()[: MAX_OUTPUTS - len(outputs)]
        totals["stages"][stage] = counts
        for key, column in (("prompt_tokens", "prompt_tokens"), ("eval_tokens", "eval_tokens"),
                            ("calls_cached", "cached"), ("errors", "errors")):  # fmt: skip
            totals[key] += counts[column]
    etl = read_manifest(f"{run.rstrip('/')}/etl")["summary"]
    summary = {"run_id": run_id, "etl": etl, **totals, "models": models, "outputs": outputs}
    dataset.publish(summary)
    open_storage(target).write_bytes("summary.json", json.dumps(summary, indent=2, sort_keys=True).encode())
    return json.dumps(
        {"outputs": target, "prompt_tokens": totals["prompt_tokens"], "eval_tokens": totals["eval_tokens"]},
        sort_keys=True,
    )
