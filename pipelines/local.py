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
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from hera.workflows import CronWorkflow, Workflow

from aistack.crds.models import OllamaAgent, TaskOrchestration
from aistack.crds.validation import load_file, parse
from aistack.pipelines.compile import compile_task
from aistack.pipelines.runtime import ollama_host
from aistack.steps.model_server import EmbeddedModelServer

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
    server = EmbeddedModelServer(
        models=sorted({a.spec.model for a in agents.values()}),
        parallel=max((a.spec.num_parallel for a in agents.values()), default=4),
    )
    return server.start(), server


def _function(template: Any) -> Callable[..., Any]:
    args = template.script.args
    module, _, name = args[args.index("-e") + 1].partition(":")
    return getattr(importlib.import_module(module), name)


def _resolve(value: str, scope: dict[str, Any]) -> str:
    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in scope:
            raise KeyError(f"cannot resolve {{{{{key}}}}} locally")
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
) -> LocalRun:
    """Run a task locally end to end; `out` replaces spec.outputTarget (default: ./out/<task>);
    setting `cancel` stops it before its next step (RunCancelled)."""
    started = time.perf_counter()
    task = task.model_copy(deep=True)
    task.spec.output_target = out or Path("out", task.metadata.name).resolve().as_uri()
    name = f"{task.metadata.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    wf = compile_task(task, agents, name=name)
    if isinstance(wf, CronWorkflow):  # locally a scheduled task runs once, now
        task.spec.schedule = None
        wf = compile_task(task, agents, name=name)
    configured = ollama_host()
    host, server = model_server(agents)
    if server is not None:
        if on_event:
            on_event(f"no Ollama at {configured}: started aistack's "
                     f"embedded extractive engine at {host} for {', '.join(server.models)}")  # fmt: skip
    elif on_event:
        on_event(f"using Ollama at {host}")
    saved = os.environ.get("OLLAMA_HOST")
    os.environ["OLLAMA_HOST"] = host
    try:
        results = execute(wf, workers, on_task, cancel)
    finally:
        if saved is None:
            os.environ.pop("OLLAMA_HOST", None)
        else:
            os.environ["OLLAMA_HOST"] = saved
        if server:
            server.stop()
    return LocalRun(
        name,
        json.loads(results["publish"])["outputs"],
        results,
        host,
        server is not None,
        time.perf_counter() - started,
    )
