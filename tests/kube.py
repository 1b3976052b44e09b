"""A Kubernetes API stand-in for tests: kmock's KubernetesEmulator on its own thread and loop,
reached through a temporary kubeconfig by the real `kubernetes` client (and by kopf).

The shim closes kmock 0.8's measured gaps (../shared/notes/ollama-and-kmock.md): creation
answers 201 (the `kubernetes` client returns None on 200) and objects get a uid,
creationTimestamp, generation and a resourceVersion that moves on every change.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import threading
import uuid
from pathlib import Path
from typing import Any

import kmock
import yaml

_versions = itertools.count(1)
KINDS = {
    "taskorchestrations": "TaskOrchestration",
    "ollamaagents": "OllamaAgent",
    "workflows": "Workflow",
    "cronworkflows": "CronWorkflow",
}
OPERATOR_RESOURCES = [
    "ai.stack/v1alpha1/taskorchestrations",
    "ai.stack/v1alpha1/ollamaagents",
    "argoproj.io/v1alpha1/workflows",
    "argoproj.io/v1alpha1/cronworkflows",
]


class Emulator(kmock.KubernetesEmulator):
    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {}) if request.action == kmock.action.CREATE else None
            if meta is not None:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault(
                    "creationTimestamp", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                )
                meta.setdefault("generation", 1)
                meta.setdefault("namespace", request.namespace)
                meta["resourceVersion"] = str(next(_versions))
            elif request.action == kmock.action.UPDATE:
                request.data.setdefault("metadata", {})["resourceVersion"] = str(next(_versions))
        return await super()._handle(request)

    async def _serve_create(self, request: kmock.Request) -> Any:
        return kmock.Response(status=201, payload=await super()._serve_create(request))


class ApiServer:
    """Starts the emulator on 127.0.0.1 (free port) in a thread; writes a kubeconfig for it."""

    def __init__(self, tmp: Path, resources: list[str], emulator: type[Emulator] = Emulator) -> None:
        self.tmp, self.resources, self.emulator_class = tmp, resources, emulator
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stopping: asyncio.Event | None = None
        self.emulator: Emulator | None = None
        self.url = ""

    async def _main(self) -> None:
        self.stopping = asyncio.Event()
        async with self.emulator_class() as emulator, kmock.Server(emulator) as server:
            emulator.resources.load_bundled()  # core and apps kinds, as discovered on K3s
            for resource in self.resources:
                plural = resource.rsplit("/", 1)[1]
                kind = KINDS.get(plural, plural.capitalize())
                emulator.resources[resource] = kmock.ResourceInfo(
                    namespaced=True,
                    kind=kind,
                    singular=plural[:-1],
                    verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                    subresources={"status"},
                )
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self.ready.set()
            await self.stopping.wait()

    def __enter__(self) -> ApiServer:
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)
        self.thread.start()
        self.ready.wait(10)
        self.kubeconfig = self.tmp / "kubeconfig"
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
                    "users": [{"name": "test", "user": {"token": "test"}}],
                    "contexts": [
                        {
                            "name": "kmock",
                            "context": {"cluster": "kmock", "user": "test", "namespace": "default"},
                        }
                    ],
                    "current-context": "kmock",
                }
            )
        )
        return self

    def objects(self, plural: str) -> list[dict[str, Any]]:
        assert self.emulator is not None
        return [
            dict(o.raw)
            for key, o in self.emulator.objects.items()
            if key[0].plural == plural and not o.deleted
        ]

    def names(self, plural: str) -> list[str]:
        """Names of the stored objects of a kind (cheap: no copies)."""
        assert self.emulator is not None
        return [
            key[2]
            for key, o in list(self.emulator.objects.items())
            if key[0].plural == plural and not o.deleted
        ]

    def __exit__(self, *exc: object) -> None:
        assert self.stopping is not None
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)
