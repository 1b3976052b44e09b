"""The functions each workflow step runs, in a pod (through Hera's runner) or locally.

Steps pass references, never bulk text: each takes the run's URI and writes Parquet datasets
under it, at fixed places, so a 10-million-chunk run compiles to the same small Workflow as a
10-chunk one:

    <run>/input/...                 inline input text, when the task has `inputText`
    <run>/etl/                      documents, chunks, rejected (one dataset)
    <run>/stages/<stage>/shard-N/   results of one shard of a stage (one dataset each)
    <outputTarget>/<run id>/        the published outputs and summary.json
"""

# No `from __future__ import annotations`: Hera reads these functions' real parameter types.

import json
import math
import os
import sys
import time
from typing import Any

import httpx
import ollama

from aistack.crds.models import OllamaAgentSpec, Stage, TaskOrchestrationSpec
from aistack.etl.chunking import ChunkingOptions
from aistack.etl.job import EtlOptions, run_etl
from aistack.etl.loaders import LoaderOptions
from aistack.etl.parquet_io import DatasetWriter, read_manifest, read_table
from aistack.etl.schemas import RESULTS
from aistack.etl.storage import open_storage
from aistack.pipelines.datasets import dataset_path, datasets_dir
from aistack.steps.agent_step import AgentStepOptions, read_records, run_agent_step
from aistack.steps.roles import AgentConfig, StageSettings, options_from_env
from aistack.steps.stages import InputRecord, StageSpec

# bundled datasets: AISTACK_DATASETS, else the package's (aistack.pipelines.datasets)
DATASETS_DIR = datasets_dir()
CHUNKS_PER_SHARD = 64  # below this a shard is not worth a pod


def _spec(task: str) -> TaskOrchestrationSpec:
    return TaskOrchestrationSpec.model_validate_json(task)


def _agents(agents: str) -> dict[str, OllamaAgentSpec]:
    return {name: OllamaAgentSpec.model_validate(spec) for name, spec in json.loads(agents).items()}


# the totals a stage step exports to Argo (see write_step_metrics)
STEP_METRICS = ("rows", "errors", "cached", "prompt_tokens", "eval_tokens", "call_seconds")


def stage_uri(run_uri: str, stage: str, shard: int) -> str:
    return f"{run_uri.rstrip('/')}/stages/{stage}/shard-{shard}"


def input_source(spec: TaskOrchestrationSpec, run_uri: str) -> str:
    """Where the ETL reads from: the input URI, a bundled dataset, or the inline text."""
    if spec.input is not None:
        root = spec.input.uri
        if spec.input.dataset:
            root = str(dataset_path(spec.input.dataset, DATASETS_DIR))
        assert root is not None  # the CRD requires uri or dataset
        return f"{root.rstrip('/')}/{spec.input.include}" if spec.input.include else root
    storage = open_storage(f"{run_uri.rstrip('/')}/input")
    storage.write_bytes("input.txt", (spec.input_text or "").encode())
    return storage.child("input.txt")


def ingest(task: str, run_uri: str) -> str:
    """Load, clean and chunk the task's input; returns the dataset URI."""
    spec = _spec(task)
    options = EtlOptions(
        chunking=ChunkingOptions(
            spec.chunking.max_tokens, spec.chunking.overlap_tokens, spec.chunking.encoding
        ),
        loader=LoaderOptions(text_field=spec.input.text_field if spec.input else "text"),
    )
    out = f"{run_uri.rstrip('/')}/etl"
    source = input_source(spec, run_uri)
    summary = run_etl(source, out, options)
    if summary.documents == 0:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary.rejected.items()))
        raise ValueError(
            f"no usable documents in {source}: {summary.records_in} records, all rejected ({reasons}); see {out}"
        )
    return out


def shards(task: str, run_uri: str) -> str:
    """The map fan-out: a JSON list of {shard, count} (count bounded by spec.maxShards)."""
    spec = _spec(task)
    chunks = read_manifest(f"{run_uri.rstrip('/')}/etl")["tables"]["chunks"]["rows"]
    count = max(1, min(spec.max_shards, math.ceil(chunks / CHUNKS_PER_SHARD)))
    return json.dumps([{"shard": i, "count": count} for i in range(count)])


def _stage_records(spec: TaskOrchestrationSpec, stage: Stage, run_uri: str) -> list[InputRecord]:
    """The stage's input: the chunks, or the final results of every shard of its inputs."""
    sources = spec.stage_inputs()[stage.stage_name]
    if not sources:
        return list(read_records(f"{run_uri.rstrip('/')}/etl", "chunks"))
    records: list[InputRecord] = []
    for source in sources:
        for uri in shard_datasets(run_uri, source):
            records.extend(read_records(uri, "results"))
    return records


def shard_datasets(run_uri: str, stage: str) -> list[str]:
    storage = open_storage(f"{run_uri.rstrip('/')}/stages/{stage}")
    keys = sorted({o.key.split("/")[0] for o in storage.list() if o.key.endswith("/_manifest.json")})
    return [storage.child(k) for k in sorted(keys, key=lambda k: int(k.split("-")[1]))]


def agent_config(name: str, spec: OllamaAgentSpec) -> AgentConfig:
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


def normalize_model(name: str) -> str:
    """Ollama's full model name: the tag defaults to `latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def ollama_host() -> str:
    """`OLLAMA_HOST` as a URL (Ollama accepts a bare host:port), default 127.0.0.1:11434."""
    host = os.environ.get("OLLAMA_HOST", "http://127.0.0.1:11434")
    return host if "://" in host else f"http://{host}"


class ModelUnavailableError(RuntimeError):
    """The model server cannot provide a model the stage needs."""


def agent_hosts() -> dict[str, str]:
    """`AISTACK_AGENT_HOSTS`: JSON {agent: model server URL}, set by the compiled stage template (each
    agent's sidecar or Service) or by the local runner; agents not named use OLLAMA_HOST."""
    raw = os.environ.get("AISTACK_AGENT_HOSTS") or "{}"
    try:
        hosts = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"AISTACK_AGENT_HOSTS is not JSON: {exc}") from None
    if not isinstance(hosts, dict) or not all(isinstance(v, str) for v in hosts.values()):
        raise ValueError("AISTACK_AGENT_HOSTS must be a JSON object of agent name -> URL")
    return hosts


def _log(message: str) -> None:
    # stdout is the step's result (Argo's outputs.result): progress goes to stderr
    print(message, file=sys.stderr, flush=True)


def wait_for_model(host: str, model: str, timeout: float = 900.0) -> None:
    """Wait for the model server at `host` to answer (a sidecar may still be starting), then make sure
    it has `model`: listed, or pulled now with its progress logged. A pull that fails (a model the
    server cannot provide) fails the step at once, with the server's reason."""
    deadline = time.monotonic() + timeout
    wanted = normalize_model(model)
    client = ollama.Client(host=host, timeout=30)

    def listed() -> bool:
        return any(m.model in (model, wanted) for m in client.list().models)

    while True:
        try:
            if listed():
                return
            break
        except (ConnectionError, httpx.HTTPError, ollama.ResponseError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the model server at {host} did not answer within {timeout:.0f}s ({exc})"
                ) from exc
            time.sleep(1.0)
    _log(f"pulling {model} at {host}")
    last_report = 0.0
    try:
        for progress in ollama.Client(host=host, timeout=max(30.0, deadline - time.monotonic())).pull(
            model, stream=True
        ):
            if progress.total and time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                _log(f"  {progress.status}: {100 * (progress.completed or 0) // progress.total}%")
    except ollama.ResponseError as exc:
        raise ModelUnavailableError(
            f"the model server at {host} cannot provide {model!r}: {exc.error}"
        ) from None
    except (ConnectionError, httpx.HTTPError) as exc:
        raise ModelUnavailableError(f"pulling {model!r} at {host} failed: {exc}") from exc
    if not listed():
        raise ModelUnavailableError(f"the model server at {host} pulled {model!r} but does not list it")


def stage(task: str, agents: str, stage_name: str, run_uri: str, shard: int = 0, shard_count: int = 1) -> str:
    """Run one stage (one shard of a map stage); returns JSON: the results URI and totals."""
    spec, agent_specs = _spec(task), _agents(agents)
    st = next((s for s in spec.pipeline if s.stage_name == stage_name), None)
    if st is None:
        raise ValueError(
            f"no stage {stage_name!r} in the task; stages are {[s.stage_name for s in spec.pipeline]}"
        )

    def agent(name: str) -> AgentConfig:
        if name not in agent_specs:
            raise ValueError(f"stage {stage_name!r}: OllamaAgent {name!r} is not defined")
        return agent_config(name, agent_specs[name])

    records = _stage_records(spec, st, run_uri)
    if st.mode == "map" and shard_count > 1:
        records = [r for i, r in enumerate(records) if i % shard_count == shard]
    settings = StageSettings(
        question=spec.question,
        labels=tuple(st.labels) if st.labels else None,
        output_schema=st.output_schema,
        prompt=st.prompt,
    )
    stage_spec = StageSpec(
        name=stage_name,
        mode=str(st.mode),
        agent=agent(st.agent_ref),
        settings=settings,
        participants=[agent(p) for p in st.participants or []],
        judge=agent(st.judge_ref) if st.judge_ref else None,
        rounds=st.rounds or 1,
        error_budget_percent=spec.error_budget_percent,
    )
    host, hosts = ollama_host(), agent_hosts()
    wait = float(os.environ.get("AISTACK_MODEL_WAIT_SECONDS", "900"))
    everyone = [stage_spec.agent, *stage_spec.participants, *([stage_spec.judge] if stage_spec.judge else [])]
    for where, model in dict.fromkeys((hosts.get(a.name, host), a.model) for a in everyone):
        wait_for_model(where, model, timeout=wait)
    cache_uri = (
        None if spec.cache.policy == "Off" else (spec.cache.uri or f"{spec.output_target.rstrip('/')}/cache")
    )
    out = stage_uri(run_uri, stage_name, shard)
    options = AgentStepOptions(host=host, agent_hosts=hosts, cache_uri=cache_uri)
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


def publish(task: str, run_uri: str, run_id: str) -> str:
    """Copy the final results to `<outputTarget>/<run id>/` with a summary; returns JSON with
    that URI (`outputs`) and the run's token totals."""
    spec = _spec(task)
    target = f"{spec.output_target.rstrip('/')}/{run_id}"
    last = spec.final_stages()
    dataset = DatasetWriter(target)
    results = dataset.table("results", RESULTS)
    totals: dict[str, Any] = {
        "stages": {},
        "prompt_tokens": 0,
        "eval_tokens": 0,
        "calls_cached": 0,
        "errors": 0,
    }
    final_rows = []
    models: dict[str, dict[str, Any]] = {}  # what answered for each model asked for
    for st in spec.pipeline:
        stage_totals = {"rows": 0, "errors": 0, "prompt_tokens": 0, "eval_tokens": 0, "cached": 0}
        for uri in shard_datasets(run_uri, st.stage_name):
            table = read_table(uri, "results")
            for row in table.to_pylist():
                stage_totals["rows"] += 1
                stage_totals["errors"] += row["error"] is not None
                stage_totals["prompt_tokens"] += row["prompt_tokens"]
                stage_totals["eval_tokens"] += row["eval_tokens"]
                stage_totals["cached"] += row["cached"]
                results.append(row, len(row["response"] or ""))
                if row["served_model"]:
                    models[row["model"]] = {
                        "served_by": row["served_model"],
                        "engine": row["engine"],
                        "stand_in": normalize_model(row["model"]) != row["served_model"],
                    }
                if st.stage_name in last and row["final"] and row["error"] is None:
                    final_rows.append(row)
        totals["stages"][st.stage_name] = stage_totals
        totals["prompt_tokens"] += stage_totals["prompt_tokens"]
        totals["eval_tokens"] += stage_totals["eval_tokens"]
        totals["calls_cached"] += stage_totals["cached"]
        totals["errors"] += stage_totals["errors"]
    etl = read_manifest(f"{run_uri.rstrip('/')}/etl")["summary"]
    summary = {
        "run_id": run_id,
        "etl": etl,
        **totals,
        "models": models,
        "outputs": [r["response"] for r in final_rows[:20]],
    }
    dataset.publish(summary)
    open_storage(target).write_bytes("summary.json", json.dumps(summary, indent=2, sort_keys=True).encode())
    return json.dumps(
        {"outputs": target, "prompt_tokens": totals["prompt_tokens"], "eval_tokens": totals["eval_tokens"]},
        sort_keys=True,
    )
