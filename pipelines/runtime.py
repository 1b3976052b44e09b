"""The functions each workflow step runs, in a pod (through Hera's runner) or locally.

Steps pass references, never bulk text or user text (see run_spec.py): the first step reads the
task from its encoded parameter and saves it in the run's storage; every step then works from the
run's location, `<outputTarget>/runs/<workflow name>`, and writes Parquet datasets under it, at
fixed places, so a 10-million-chunk run compiles to the same small Workflow as a 10-chunk one:

    <run>/spec.json                 the task and its agents, as the first step received them
    <run>/input/...                 inline input text, when the task has `inputText`
    <run>/etl/plan/part-N.json      the input cut into partitions, one file each (`plan`)
    <run>/etl/part-N/               one partition's documents, chunks, rejected (`ingest`, N pods)
    <run>/etl/                      all of them as one dataset, and shards.json (`etl`)
    <run>/stages/<stage>/shard-N/   results of one shard of a stage, written part by part
    <outputTarget>/<run id>/        the published outputs and summary.json (`publish`)

A step that fails for a reason a retry cannot fix (an invalid task, no usable input, a model the
server cannot provide) exits with PERMANENT_EXIT; the compiled retryStrategy retries every other
failure and never that one.
"""

# No `from __future__ import annotations`: Hera reads these functions' real parameter types.

import functools
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from aistack.crds.models import OllamaAgentSpec, Stage, TaskOrchestrationSpec
from aistack.etl.chunking import ChunkingOptions
from aistack.etl.errors import EtlError, StorageError
from aistack.etl.job import EtlOptions
from aistack.etl.loaders import LoaderOptions
from aistack.etl.parquet_io import chunk_row_groups, iter_row_groups, read_manifest
from aistack.etl.partitions import (
    merge_datasets,
    partition_count,
    partition_name,
    plan_partitions,
    read_partition,
    run_etl_partition,
    write_partitions,
)
from aistack.etl.storage import open_storage, split_pattern
from aistack.pipelines import run_spec
from aistack.pipelines.datasets import dataset_path, datasets_dir

# What only the agent and publish steps use (the Ollama client, JSON Schema, pyarrow.compute:
# about 0.18 s of imports) is imported by them: plan, ingest and etl pods start without it.
if TYPE_CHECKING:
    from aistack.steps.roles import AgentConfig
    from aistack.steps.stages import InputRecord, StageSpec

__all__ = ["DATASETS_DIR", "PERMANENT_EXIT", "etl", "ingest", "plan", "publish", "stage"]

# bundled datasets: AISTACK_DATASETS, else the package's (aistack.pipelines.datasets)
DATASETS_DIR = datasets_dir()
CHUNKS_PER_SHARD = 64  # below this a shard is not worth a pod
SHARDS_FILE = "shards.json"  # which row groups of the chunks each map shard reads
PERMANENT_EXIT = 3  # the exit code of a failure no retry can fix (compile.py's retryStrategy)
# the totals a stage step exports to Argo (see write_step_metrics)
STEP_METRICS = ("rows", "errors", "cached", "prompt_tokens", "eval_tokens", "call_seconds")

F = TypeVar("F", bound=Callable[..., str])


class PermanentStepError(SystemExit):
    """Ends a step with PERMANENT_EXIT (Argo then does not retry it); the cause is the error."""

    def __init__(self, message: str) -> None:
        super().__init__(PERMANENT_EXIT)
        self.message = message


def _permanent(exc: BaseException) -> bool:
    if isinstance(exc, StorageError):  # storage may be back on the next attempt
        return False
    permanent: tuple[type[BaseException], ...] = (ValueError, EtlError)
    # raised only by modules a step imported: one not imported raised nothing
    for module, name in (
        ("aistack.pipelines.model_servers", "ModelUnavailableError"),
        ("aistack.steps.model_weights", "WeightsMissingError"),
    ):
        if module in sys.modules:
            permanent += (getattr(sys.modules[module], name),)
    return isinstance(exc, permanent)


def step(fn: F) -> F:
    """A step entry point: a failure no retry can fix is reported on stderr and exits PERMANENT_EXIT."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> str:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not _permanent(exc):
                raise
            print(f"aistack: {fn.__name__} failed, not retried: {type(exc).__name__}: {exc}", file=sys.stderr)
            raise PermanentStepError(str(exc)) from exc

    return run  # type: ignore[return-value]


def stage_uri(run_uri: str, stage: str, shard: int) -> str:
    return f"{run_uri.rstrip('/')}/stages/{stage}/shard-{shard}"


def input_source(spec: TaskOrchestrationSpec, run_uri: str) -> tuple[str, str | None]:
    """Where the ETL reads from (the input URI, a bundled dataset, or the inline text) and the root
    it must not leave: an `include` is matched inside the dataset or URI, and every file it finds
    must still be there once symlinks are resolved."""
    if spec.input is not None:
        root = spec.input.uri
        if spec.input.dataset:  # a bundled dataset: nothing of it may lead elsewhere
            root = str(dataset_path(spec.input.dataset, DATASETS_DIR))
            source = f"{root}/{spec.input.include}" if spec.input.include else root
            return source, root
        assert root is not None  # the CRD requires uri or dataset
        # what the URI names, and nothing a symlink in it leads to (a gateway allows roots, not links)
        base = split_pattern(root)[0]
        return (f"{root.rstrip('/')}/{spec.input.include}" if spec.input.include else root), base
    storage = open_storage(f"{run_uri.rstrip('/')}/input")
    storage.write_bytes("input.txt", (spec.input_text or "").encode())
    return storage.child("input.txt"), None


def etl_options(task: TaskOrchestrationSpec, confine: str | None) -> EtlOptions:
    return EtlOptions(
        chunking=ChunkingOptions(
            task.chunking.max_tokens, task.chunking.overlap_tokens, task.chunking.encoding
        ),
        loader=LoaderOptions(text_field=task.input.text_field if task.input else "text", confine_to=confine),
    )


@step
def plan(spec: str, target: str, workflow: str) -> str:
    """The first step: save the task for the others, list its input and cut it into at most
    maxShards partitions of similar size (a small input is one); returns the ingest fan-out, a
    JSON list of partition numbers (the partitions themselves are in the run's storage)."""
    run = run_spec.run_uri(target, workflow)
    received = run_spec.RunSpec.decode(spec)
    run_spec.save(run, received)
    task = received.task
    source, confine = input_source(task, run)
    partitions = plan_partitions(
        source, task.max_shards, confine_to=confine, loader=etl_options(task, confine).loader
    )
    write_partitions(f"{run}/etl", partitions)
    return json.dumps([p.index for p in partitions])


@step
def ingest(target: str, workflow: str, partition: int) -> str:
    """Load, clean and chunk one partition of the input into `<run>/etl/part-N/`."""
    run = run_spec.run_uri(target, workflow)
    task = run_spec.load(run).task
    part = read_partition(f"{run}/etl", partition)  # its own, not the whole plan
    out = f"{run}/etl/{part.name}"
    summary = run_etl_partition(part, out, etl_options(task, None))  # confined as the plan recorded
    return json.dumps({"dataset": out, "documents": summary.documents, "rejected": summary.rejected_total})


@step
def etl(target: str, workflow: str) -> str:
    """Publish the partitions as one dataset (`<run>/etl`, in = out + rejected over all of them) and
    cut its chunks into map shards of whole row groups; returns the map fan-out: a JSON list of
    {shard, count} (count bounded by maxShards)."""
    run = run_spec.run_uri(target, workflow)
    task = run_spec.load(run).task
    dataset = f"{run}/etl"
    names = [partition_name(i) for i in range(partition_count(dataset))]
    merged = merge_datasets([f"{dataset}/{name}" for name in names], dataset)
    summary = merged["summary"]
    if summary["documents"] == 0:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary["rejected"].items()))
        raise ValueError(
            f"no usable documents: {summary['records_in']} records, all rejected ({reasons}); see {dataset}"
        )
    groups = chunk_row_groups(dataset)
    chunks = sum(rows for _, _, rows in groups)
    count = max(1, min(task.max_shards, math.ceil(chunks / CHUNKS_PER_SHARD), len(groups)))
    open_storage(dataset).write_bytes(SHARDS_FILE, json.dumps(assign_shards(groups, count)).encode())
    return json.dumps([{"shard": i, "count": count} for i in range(count)])


def assign_shards(groups: list[tuple[str, int, int]], count: int) -> list[list[tuple[str, int]]]:
    """`count` contiguous runs of whole row groups (count <= len(groups)), each at least one group and
    holding about chunks / count rows: a shard reads its own row groups and nothing else."""
    total = sum(rows for _, _, rows in groups)
    shards: list[list[tuple[str, int]]] = []
    seen, i = 0, 0
    for k in range(count):
        left = count - k - 1  # shards after this one: each needs a group of its own
        target = total * (k + 1) / count
        shard = []
        while i < len(groups) - left and (not shard or k == count - 1 or seen + groups[i][2] / 2 <= target):
            key, index, rows = groups[i]
            shard.append((key, index))
            seen += rows
            i += 1
        shards.append(shard)
    return shards


def _chunks_of_shard(run: str, shard: int, shard_count: int) -> "Iterator[InputRecord]":
    from aistack.steps.stages import InputRecord

    dataset = f"{run}/etl"
    assigned = json.loads(open_storage(dataset).read_bytes(SHARDS_FILE))
    if len(assigned) != shard_count:
        raise ValueError(f"shard {shard} of {shard_count}: the plan at {dataset} has {len(assigned)} shards")
    slices = [(key, index) for key, index in assigned[shard]]
    for batch in iter_row_groups(dataset, "chunks", slices, ["chunk_id", "text"]):
        for cid, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
            yield InputRecord(cid, text)


def _stage_records(
    spec: TaskOrchestrationSpec, stage: Stage, run_uri: str, shard: int, shard_count: int
) -> "Iterator[InputRecord]":
    """The stage's input, streamed: the chunks, or the final results of every shard of its inputs
    (once they are within their stages' error budgets). A map shard reads its share only."""
    from aistack.steps.agent_step import read_records

    sources = spec.stage_inputs()[stage.stage_name]
    share = stage.mode == "map" and shard_count > 1
    if not sources:
        if stage.mode == "map":
            yield from _chunks_of_shard(run_uri.rstrip("/"), shard, shard_count)
        else:
            yield from read_records(f"{run_uri.rstrip('/')}/etl", "chunks")
        return
    for source in sources:
        uris = shard_datasets(run_uri, source)
        check_stage_budget(spec, source, uris)
        for i, uri in enumerate(uris):
            if not share or i % shard_count == shard:
                yield from read_records(uri, "results")


def check_stage_budget(spec: TaskOrchestrationSpec, stage_name: str, uris: list[str]) -> None:
    """A stage's results are used only within its error budget, counted over all its shards."""
    from aistack.steps.agent_step import check_error_budget

    summaries = [read_manifest(uri)["summary"] for uri in uris]
    where = uris[0].rsplit("/", 1)[0] if uris else stage_name
    check_error_budget(stage_name, spec.error_budget_percent, summaries, where)


def shard_datasets(run_uri: str, stage: str) -> list[str]:
    storage = open_storage(f"{run_uri.rstrip('/')}/stages/{stage}")
    keys = sorted({o.key.split("/")[0] for o in storage.list() if o.key.endswith("/_manifest.json")})
    return [storage.child(k) for k in sorted(keys, key=lambda k: int(k.split("-")[1]))]


def agent_config(name: str, spec: OllamaAgentSpec) -> "AgentConfig":
    from aistack.steps.roles import AgentConfig, options_from_env

    return AgentConfig(
        name=name,
        model=spec.model,
        role=str(spec.role),
        options={
            **options_from_env(spec.env),
            **({"num_ctx": spec.context_tokens} if spec.context_tokens else {}),
        },
        keep_alive=spec.keep_alive,
        num_parallel=spec.num_parallel,
        context_tokens=spec.context_tokens,
    )


def _stage_spec(received: run_spec.RunSpec, st: Stage) -> "StageSpec":
    from aistack.steps.roles import AgentConfig, StageSettings
    from aistack.steps.stages import StageSpec

    task, agents = received.task, received.agents

    def agent(name: str) -> AgentConfig:
        if name not in agents:
            raise ValueError(f"stage {st.stage_name!r}: OllamaAgent {name!r} is not defined")
        return agent_config(name, agents[name])

    settings = StageSettings(
        question=task.question,
        labels=tuple(st.labels) if st.labels else None,
        output_schema=st.output_schema,
        prompt=st.prompt,
    )
    return StageSpec(
        name=st.stage_name,
        mode=str(st.mode),
        agent=agent(st.agent_ref),
        settings=settings,
        participants=[agent(p) for p in st.participants or []],
        judge=agent(st.judge_ref) if st.judge_ref else None,
        rounds=st.rounds or 1,
        error_budget_percent=task.error_budget_percent,
    )


@step
def stage(target: str, workflow: str, stage_name: str, shard: int = 0, shard_count: int = 1) -> str:
    """Run one stage (one shard of a map stage); returns JSON: the results URI and totals."""
    from aistack.pipelines.model_servers import agent_hosts, ollama_host, wait_for_model
    from aistack.steps.agent_step import AgentStepOptions, run_agent_step

    run = run_spec.run_uri(target, workflow)
    received = run_spec.load(run)
    task = received.task
    st = next((s for s in task.pipeline if s.stage_name == stage_name), None)
    if st is None:
        raise ValueError(
            f"no stage {stage_name!r} in the task; stages are {[s.stage_name for s in task.pipeline]}"
        )
    stage_spec = _stage_spec(received, st)
    stage_spec.cache_scope = f"{stage_name}/shard-{shard}-of-{shard_count}"
    records = _stage_records(task, st, run, shard, shard_count)
    host, hosts = ollama_host(), agent_hosts()
    wait = float(os.environ.get("AISTACK_MODEL_WAIT_SECONDS", "900"))
    for where, model in dict.fromkeys((hosts.get(a.name, host), a.model) for a in stage_spec.agents):
        wait_for_model(where, model, timeout=wait)
    cache_uri = (
        None if task.cache.policy == "Off" else (task.cache.uri or f"{task.output_target.rstrip('/')}/cache")
    )
    out = stage_uri(run, stage_name, shard)
    options = AgentStepOptions(
        host=host,
        agent_hosts=hosts,
        cache_uri=cache_uri,
        refresh=task.cache.policy == "Refresh",
        label=f"shard {shard + 1} of {shard_count}" if st.mode == "map" and shard_count > 1 else "",
    )
    outcome = run_agent_step(stage_spec, records, out, options)
    totals = outcome.totals()
    write_step_metrics(totals)
    # the step's result (Argo's outputs.result): where the rows are, and what they cost
    return json.dumps({"uri": out, **totals}, sort_keys=True)


def write_step_metrics(totals: dict[str, int]) -> None:
    """Write a stage's totals as files under $AISTACK_METRICS_DIR, one number each: compiled
    stage templates read them as output parameters and emit them as Argo custom metrics."""
    root = os.environ.get("AISTACK_METRICS_DIR")
    if not root:
        return
    os.makedirs(root, exist_ok=True)
    values = {**totals, "call_seconds": round(totals.get("call_ns", 0) / 1e9, 3)}
    for key in STEP_METRICS:
        with open(os.path.join(root, key), "w") as f:
            f.write(str(values.get(key, 0)))


@step
def publish(target: str, workflow: str) -> str:
    """Copy the final results to `<outputTarget>/<run id>/` with a summary; returns JSON with that URI
    (`outputs`) and the run's token totals. The run id is the workflow's name."""
    from aistack.pipelines.publish import publish_run

    run = run_spec.run_uri(target, workflow)
    task = run_spec.load(run).task
    stages = {st.stage_name: shard_datasets(run, st.stage_name) for st in task.pipeline}
    for name in task.final_stages():  # the others were checked by the stages that read them
        check_stage_budget(task, name, stages[name])
    return publish_run(task, run, workflow, stages)
