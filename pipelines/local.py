"""The local runner: executes the compiled Argo graph on this machine.

There is one graph. `compile_task` builds the Hera Workflow; this runner walks that same
object's DAG: each task's template names its function (`-e aistack.pipelines.runtime:<fn>`),
its arguments are Argo expressions resolved here (`{{workflow.parameters.*}}`,
`{{tasks.*.outputs.result}}`, `{{item.*}}`, `{{workflow.name}}`), and `withParam` fan-outs
run on a thread pool. The model server is `OLLAMA_HOST` when it answers, otherwise the
embedded model server is started for the run.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import secrets
import string
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ollama
from hera.workflows import CronWorkflow, Workflow

from aistack.crds.models import OllamaAgent, TaskOrchestration
from aistack.crds.validation import load_file, parse
from aistack.pipelines.compile import compile_task
from aistack.pipelines.model_servers import ollama_host
from aistack.steps.extractive import EXTRACTIVE_MODEL
from aistack.steps.model_names import names_model
from aistack.steps.model_server import EmbeddedModelServer, normalize
from aistack.steps.model_weights import NATIVE_MODEL

_EXPR = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")


def load_task(
    task_file: Path, agents_file: Path | None = None
) -> tuple[TaskOrchestration, dict[str, OllamaAgent]]:
    """The task and its agents from YAML (agents from `agents_file`, else `agents.yaml` beside it)."""
    files = [task_file]
    agents_path = agents_file or task_file.with_name("agents.yaml")
    if agents_path.exists() and agents_path != task_file:
        files.append(agents_path)
    task: TaskOrchestration | None = None
    agents: dict[str, OllamaAgent] = {}
    for path in files:
        for doc in load_file(path):
            obj = parse(doc)
            if isinstance(obj, TaskOrchestration):
                if task is not None:
                    raise ValueError(f"{path}: more than one TaskOrchestration; give one per file")
                task = obj
            else:
                agents[obj.metadata.name] = obj
    if task is None:
        raise ValueError(f"{task_file}: no TaskOrchestration found")
    return task, agents


@dataclass
class LocalRun:
    name: str
    outputs: str
    results: dict[str, str] = field(default_factory=dict)
    host: str = ""
    embedded: bool = False
    seconds: float = 0.0
    models: dict[str, str] = field(default_factory=dict)  # model -> who serves it, in words


def ollama_reachable(host: str) -> bool:
    try:
        return httpx.get(f"{host}/api/version", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def model_server(agents: dict[str, OllamaAgent]) -> tuple[str, EmbeddedModelServer | None]:
    """Where the agents' models are served: `OLLAMA_HOST` when it answers, else aistack's
    embedded model server, started here for their models (the caller stops it)."""
    host = ollama_host()
    if ollama_reachable(host):
        return host, None
    server = _embedded_server(agents.values(), "llama")
    return server.start(), server


def _embedded_server(agents: Any, stand_in_engine: str) -> EmbeddedModelServer:
    # One slot: llama.cpp's continuous batching is not batch-invariant (a prompt batched with
    # another can get a different greedy answer), and on a CPU the prompt already uses every
    # core, so more slots buy little; with one, a run at temperature 0 is reproducible.
    return EmbeddedModelServer(
        models=sorted({a.spec.model for a in agents}), parallel=1, stand_in_engine=stand_in_engine
    )


@dataclass
class ModelPlacement:
    """Which model server answers for each agent of a local run."""

    hosts: dict[str, str]  # agent -> URL
    served_by: dict[str, str]  # model -> who serves it, in words
    server: EmbeddedModelServer | None = None


def _ollama_has(host: str, model: str, on_event: Callable[[str], None] | None) -> bool:
    """Whether the Ollama at `host` has `model`, pulling it if it can (as `ollama run` does)."""
    client = ollama.Client(host=host, timeout=30)
    try:
        if any(names_model(m.model, model) for m in client.list().models):
            return True
        if on_event:
            on_event(f"pulling {model} at {host}")
        for _ in ollama.Client(host=host).pull(model, stream=True):
            pass
        return True
    except (ollama.ResponseError, ConnectionError, httpx.HTTPError) as exc:
        if on_event:
            on_event(f"the Ollama at {host} cannot provide {model}: {getattr(exc, 'error', exc)}")
        return False


def place_models(
    agents: dict[str, OllamaAgent],
    stand_in_engine: str = "llama",
    on_event: Callable[[str], None] | None = None,
) -> ModelPlacement:
    """Each agent's model from `OLLAMA_HOST` when it answers and has the model (or can pull it);
    every other model from aistack's embedded model server, started here as a stand-in that says
    what really answers (the caller stops it)."""
    host = ollama_host()
    models = sorted({a.spec.model for a in agents.values()})
    reachable = ollama_reachable(host)
    on_ollama = {m for m in models if reachable and _ollama_has(host, m, on_event)}
    hosts = {name: host for name, a in agents.items() if a.spec.model in on_ollama}
    served_by = {m: f"Ollama at {host}" for m in on_ollama}
    rest = {name: a for name, a in agents.items() if a.spec.model not in on_ollama}
    if not rest:
        return ModelPlacement(hosts, served_by)
    server = _embedded_server(rest.values(), stand_in_engine)
    url = server.start()
    stand_ins = server.stand_ins()
    for name, a in rest.items():
        hosts[name] = url
        full = normalize(a.spec.model)
        served_by[a.spec.model] = (
            f"served by the embedded {_describe(stand_ins[full])} stand-in"
            if full in stand_ins
            else f"the embedded {_describe(full)}"
        )
    if on_event:
        why = f"no Ollama at {host}" if not reachable else f"the Ollama at {host} lacks some models"
        on_event(f"{why}: started aistack's embedded model server at {url}")
        for model in sorted(served_by):
            on_event(f"  {model} -> {served_by[model]}")
    return ModelPlacement(hosts, served_by, server)


def _describe(model: str) -> str:
    return {
        normalize(NATIVE_MODEL): "smollm2-135m-instruct LLM (llama.cpp)",
        EXTRACTIVE_MODEL: "aistack-extractive engine (not a language model)",
    }.get(normalize(model), model)


def run_name(task: str) -> str:
    """A unique run id, like Argo's generateName: two runs started in the same second differ."""
    suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
    return f"{task[:40].rstrip('-')}-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"


def _function(template: Any) -> Callable[..., Any]:
    """The step's function, unwrapped: in a pod, runtime.step turns a permanent failure into an exit
    code for Argo; here the exception itself reaches the caller."""
    args = template.script.args
    module, _, name = args[args.index("-e") + 1].partition(":")
    return inspect.unwrap(getattr(importlib.import_module(module), name))


def _resolve(value: str, scope: dict[str, Any], keep: tuple[str, ...] = ()) -> str:
    """Substitute Argo's `{{...}}` tags as its controller does, strictly: a tag that does not resolve
    fails (Argo: "failed to resolve"), tags starting with one of `keep` are left for a later pass,
    and an expression tag (`{{=...}}`) is refused, since only Argo evaluates those."""

    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key.startswith(keep):
            return match.group(0)
        if key.startswith("="):
            raise KeyError(f"{match.group(0)} is an Argo expression; the local runner does not evaluate them")
        if key not in scope:
            raise KeyError(f"failed to resolve {match.group(0)}")
        return str(scope[key])

    return _EXPR.sub(sub, value)


def _call(fn: Callable[..., Any], arguments: dict[str, str]) -> str:
    params = inspect.signature(fn).parameters
    kwargs = {k: (int(v) if params[k].annotation in (int, "int") else v) for k, v in arguments.items()}
    return str(fn(**kwargs))


class RunCancelled(Exception):
    """The run's `cancel` event was set: it stopped before its next step (or fan-out item)."""


def execute(
    wf: Workflow,
    workers: int = 4,
    on_task: Callable[[str, str], None] | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, str]:
    """Run a compiled Workflow's DAG here; returns each task's result. Setting `cancel` stops
    the run cooperatively: the steps running finish, no further step starts."""

    def go_on(step: str) -> None:
        if cancel is not None and cancel.is_set():
            raise RunCancelled(f"cancelled before step {step}")

    built = wf.build()
    spec = built.spec
    templates = {t.name: t for t in spec.templates}
    dag = templates[spec.entrypoint].dag
    scope: dict[str, Any] = {"workflow.name": built.metadata.name or built.metadata.generate_name}
    for p in spec.arguments.parameters or []:
        scope[f"workflow.parameters.{p.name}"] = p.value
    scope = {k: _resolve(str(v), scope) for k, v in scope.items()}
    done: dict[str, str] = {}
    pending = {t.name: t for t in dag.tasks}

    def deps(task: Any) -> list[str]:
        return [d.strip() for d in (task.depends or "").split("&&") if d.strip()]

    with ThreadPoolExecutor(workers) as pool:
        while pending:
            ready = [t for t in pending.values() if all(d in done for d in deps(t))]
            if not ready:
                raise RuntimeError(f"the DAG cannot make progress: {sorted(pending)} wait on each other")
            for task in ready:
                del pending[task.name]
                go_on(task.name)
                fn = _function(templates[task.template])
                raw = {a.name: a.value for a in task.arguments.parameters or []}
                if on_task:
                    on_task(task.name, "started")
                if task.with_param:
                    items = json.loads(_resolve(task.with_param, scope))
                    # Argo resolves a fan-out's arguments twice: first the references, then the whole
                    # task again with each item; a value substituted in the first pass is scanned again
                    raw = {k: _resolve(v, scope, keep=("item",)) for k, v in raw.items()}

                    def one(
                        item: Any,
                        raw: dict[str, str] = raw,
                        fn: Callable[..., Any] = fn,
                        step: str = task.name,
                    ) -> str:
                        go_on(step)
                        local = dict(scope)
                        local["item"] = json.dumps(item) if isinstance(item, dict | list) else item
                        if isinstance(item, dict):
                            local |= {f"item.{k}": v for k, v in item.items()}
                        return _call(fn, {k: _resolve(v, local) for k, v in raw.items()})

                    result = json.dumps(list(pool.map(one, items)))
                else:
                    result = _call(fn, {k: _resolve(v, scope) for k, v in raw.items()})
                done[task.name] = result
                scope[f"tasks.{task.name}.outputs.result"] = result
                if on_task:
                    on_task(task.name, "done")
    return done


def run_task(
    task: TaskOrchestration,
    agents: dict[str, OllamaAgent],
    out: str | None = None,
    workers: int = 4,
    on_event: Callable[[str], None] | None = None,
    on_task: Callable[[str, str], None] | None = None,
    cancel: threading.Event | None = None,
    stand_in_engine: str = "llama",
) -> LocalRun:
    """Run a task locally end to end; `out` replaces spec.outputTarget (default: ./out/<task>).
    Models come from `OLLAMA_HOST` where it has them, else from the embedded model server, whose
    `stand_in_engine` answers for models it does not own (and says so in every result). Setting
    `cancel` stops the run before its next step (RunCancelled)."""
    started = time.perf_counter()
    task = task.model_copy(deep=True)
    task.spec.output_target = out or Path("out", task.metadata.name).resolve().as_uri()
    name = run_name(task.metadata.name)
    wf = compile_task(task, agents, name=name)
    if isinstance(wf, CronWorkflow):  # locally a scheduled task runs once, now
        task.spec.schedule = None
        wf = compile_task(task, agents, name=name)
    used = {n: agents[n] for n in task.spec.agent_refs()}
    placement = place_models(used, stand_in_engine, on_event)
    # the steps find their model servers where a pod's would: in the environment (one run at a time
    # per process: the gateway runs its local tasks on one worker by default)
    saved = {k: os.environ.get(k) for k in ("OLLAMA_HOST", "AISTACK_AGENT_HOSTS")}
    first = placement.hosts[task.spec.pipeline[0].agent_ref]
    try:
        os.environ["OLLAMA_HOST"] = first
        os.environ["AISTACK_AGENT_HOSTS"] = json.dumps(placement.hosts, sort_keys=True)
        results = execute(wf, workers, on_task, cancel)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if placement.server:
            placement.server.stop()
    return LocalRun(
        name,
        json.loads(results["publish"])["outputs"],
        results,
        first,
        placement.server is not None,
        time.perf_counter() - started,
        placement.served_by,
    )
