"""Builds a gateway from its settings: the local runner and a model server (local mode), or the
Kubernetes API (cluster mode)."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from aistack.crds.models import OllamaAgent
from aistack.crds.validation import load_file, parse
from aistack.gateway.agents import ClusterAgents, LocalAgents
from aistack.gateway.app import create_app
from aistack.gateway.auth import KubernetesAuth, StaticTokenAuth
from aistack.gateway.settings import GatewaySettings
from aistack.gateway.tasks import ClusterTasks, LocalTasks
from aistack.inputs import InputPolicy
from aistack.pipelines.runtime import DATASETS_DIR
from aistack.uris import storage_uri


def load_agents(files: tuple[Path, ...]) -> dict[str, OllamaAgent]:
    agents: dict[str, OllamaAgent] = {}
    for path in files:
        for doc in load_file(path):
            obj = parse(doc)
            if isinstance(obj, OllamaAgent):
                if obj.metadata.name in agents:
                    raise ValueError(f"{path}: OllamaAgent {obj.metadata.name!r} is defined twice")
                agents[obj.metadata.name] = obj
    return agents


def build_app(settings: GatewaySettings) -> tuple[FastAPI, str]:
    """The app and a line describing what it serves."""
    limits = {"max_body_bytes": settings.max_body_bytes, "client_concurrency": settings.client_concurrency,
              "request_timeout": settings.request_timeout, "default_namespace": settings.namespace}  # fmt: skip
    # in cluster mode file:// input is read from the workflow pod's disk, not this one: the check
    # is on the path as written (no '..', under a root), symlinks are for the ETL step to confine
    inputs = InputPolicy.allowing(
        settings.input_roots, settings.input_buckets, DATASETS_DIR, resolve=settings.mode == "local"
    )
    if settings.mode == "cluster":
        from aistack.operator.kube import api_client

        api = api_client(settings.kubeconfig)
        app = create_app(tasks=ClusterTasks(api), agents=ClusterAgents(api, settings.ollama_host),
                         auth=KubernetesAuth(api), inputs=inputs, **limits)  # fmt: skip
        return (
            app,
            f"cluster mode: API server {api.configuration.host}, default namespace {settings.namespace}",
        )

    from aistack.pipelines.local import model_server

    agents = load_agents(settings.agent_files)
    host, server = model_server(agents)
    if server is not None:
        os.environ["OLLAMA_HOST"] = host  # the local runner's steps call the same server
    out = storage_uri(settings.out) if settings.out else Path("out", "gateway").resolve().as_uri()
    tasks = LocalTasks(agents, out, settings.state_dir, settings.workers, model_host=host)

    def shutdown() -> None:
        tasks.close()
        if server is not None:
            server.stop()

    app = create_app(tasks=tasks, agents=LocalAgents(agents, host), auth=StaticTokenAuth(settings.token),
                     inputs=inputs, on_shutdown=shutdown, **limits)  # fmt: skip
    auth = "bearer token required" if settings.token else "no token set: reads open, writes refused"
    engine = "aistack's embedded engine" if server else "Ollama"
    roots = ", ".join(str(r) for r in inputs.roots)
    return app, (f"local mode: {len(agents)} agents on {engine} at {host}; results under {out}; "
                 f"input from {roots}; {auth}")  # fmt: skip
