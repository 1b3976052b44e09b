"""A Kubernetes API stand-in for tests: kmock's KubernetesEmulator on its own thread and loop,
reached through a temporary kubeconfig by the real `kubernetes` client (and by kopf, and kubectl).

kmock 0.8 stores objects as given. The shim makes it behave like a real API server where the
difference matters to aistack (each was seen against kube-apiserver):
- a create answers 201 (the `kubernetes` client returns None on 200); objects get a uid,
  creationTimestamp, generation and a resourceVersion that moves on every change;
  `generateName` gets a random suffix (kmock stored such objects under the name None);
- a custom resource with a structural schema has its unknown fields pruned on every write, as
  the server prunes them (kopf then warns "Merge-patching finished with inconsistencies" when an
  operator writes what the schema does not declare, e.g. a handler's return value);
- with a status subresource, a write to the object ignores `status` and a write to `/status`
  changes only `status` (Argo's Workflow CRDs have no status subresource);
- Namespaces are objects (`/api/v1/namespaces[/NAME]`; kmock's path parser failed on them),
  `default` and the kube-* namespaces exist, and creating in a missing namespace is 404
  `namespaces "X" not found`;
- a created CustomResourceDefinition serves its resource (discovery), as the server does once it
  is established;
- /openapi/v3 says that every resource takes `fieldValidation` (what kubectl checks before it
  leaves validation to the server), lists have their `kind` and the core group's discovery says
  `v1` (kmock: "/v1"), so the real kubectl runs here.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import random
import string
import threading
import uuid
from pathlib import Path
from typing import Any

import kmock
import yaml
from aiohttp import web
from kmock._internal import parsing  # pinned kmock==0.8.*: its path parser is fixed below

from aistack.crds.schema import KINDS, resource_schema

_versions = itertools.count(1)
KINDS_BY_PLURAL = {
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
# what a fresh cluster has
BUILTIN_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
# structural schemas of the CRs the stand-in prunes; Argo's own CRDs preserve unknown fields
SCHEMAS = {info["plural"]: resource_schema(kind) for kind, info in KINDS.items()}
STATUS_SUBRESOURCE = {"taskorchestrations", "ollamaagents"}
NAMESPACES = kmock.resource(group="", version="v1", plural="namespaces")
_parse_path = parsing.parse_path


def _fixed_parse_path(path: str) -> parsing.ParsedPath:
    """kmock 0.8 reads /api/v1/namespaces as "the namespace named <missing>" and fails (500)."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
        len(parts) <= 4 or (len(parts) == 5 and parts[4] in ("status", "finalize"))
    ):
        return parsing.ParsedPath(
            "",
            "v1",
            "namespaces",
            None,
            parts[3] if len(parts) > 3 else None,
            parts[4] if len(parts) > 4 else None,
        )
    return _parse_path(path)


parsing.parse_path = _fixed_parse_path


def prune(value: Any, schema: dict[str, Any]) -> Any:
    """What a structural schema keeps of a value (the API server's pruning)."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return {k: prune(v, props[k]) if k in props else v for k, v in value.items()}
        if props:
            return {k: prune(v, props[k]) for k, v in value.items() if k in props}
        if isinstance(schema.get("additionalProperties"), dict):
            return {k: prune(v, schema["additionalProperties"]) for k, v in value.items()}
        return {}
    if isinstance(value, list) and "items" in schema:
        return [prune(v, schema["items"]) for v in value]
    return value


def prune_object(obj: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Pruning at the root: apiVersion, kind and metadata are the server's, never pruned."""
    kept = {k: v for k, v in obj.items() if k in ("apiVersion", "kind", "metadata")}
    rest = prune({k: v for k, v in obj.items() if k not in kept}, schema)
    return {**kept, **rest}


class Emulator(kmock.KubernetesEmulator):
    writes: list[tuple[str, str, Any]]  # (method, path, body as sent) of every write, for assertions

    async def _handle(self, request: kmock.Request) -> Any:
        resource = request.resource
        if request.url.path.startswith("/openapi/v3"):
            return web.json_response(self._openapi_v3(request.url.path))
        if request.method in (kmock.method.POST, kmock.method.PATCH, kmock.method.PUT):
            self.writes.append((str(request.method), request.url.path, copy.deepcopy(request.data)))
        if resource is not None and request.action == kmock.action.CREATE and isinstance(request.data, dict):
            namespace = request.namespace or (request.data.get("metadata") or {}).get("namespace")
            if namespace and resource.plural != "namespaces" and not self._has_namespace(namespace):
                raise kmock.KubernetesError(
                    status=404, reason="NotFound", message=f'namespaces "{namespace}" not found',
                    details={"name": namespace, "kind": "namespaces"},
                )  # fmt: skip
        if resource is not None and request.method == kmock.method.PUT and request.name is not None:
            return await self._serve_replace(request)
        if resource is not None and isinstance(request.data, dict):
            self._as_the_server_would_store(request)
        response = await super()._handle(request)
        if (
            resource is not None
            and request.action == kmock.action.CREATE
            and resource.plural == "customresourcedefinitions"
        ):
            self._serve_crd(request.data)
        return response

    async def _serve_replace(self, request: kmock.Request) -> Any:
        """PUT, which kmock does not serve: the whole object replaced, as a real server does, only if
        the body carries the stored resourceVersion (else 409, as optimistic concurrency requires)."""
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f'"{request.name}" not found')
        stored = self.objects[key].raw
        meta = dict(request.data.get("metadata") or {})
        if meta.get("resourceVersion") != stored["metadata"].get("resourceVersion"):
            raise kmock.KubernetesError(
                status=409, reason="Conflict",
                message=f'Operation cannot be fulfilled on "{request.name}": the object has been modified',
            )  # fmt: skip
        kept = {
            k: stored["metadata"][k]
            for k in ("uid", "creationTimestamp", "namespace")
            if k in stored["metadata"]
        }
        meta |= kept | {"resourceVersion": str(next(_versions)),
                        "generation": stored["metadata"].get("generation", 1) + 1}  # fmt: skip
        replaced = {**request.data, "metadata": meta}
        self.objects[key] = replaced
        return web.json_response(replaced)

    async def _serve_version(self, request: kmock.Request) -> Any:
        served = await super()._serve_version(request)
        served["groupVersion"] = served["groupVersion"].lstrip("/")  # kmock says "/v1" for the core group
        return served

    async def _serve_list(self, request: kmock.Request) -> Any:
        listed = await super()._serve_list(request)
        info = self.resources[request.resource] if request.resource in self.resources else None  # noqa: SIM401 (no .get)
        group = request.resource.group
        version = f"{group}/{request.resource.version}" if group else request.resource.version
        return {"apiVersion": version, "kind": f"{info.kind if info else 'Object'}List", **listed}

    def _openapi_v3(self, path: str) -> dict[str, Any]:
        """Just enough OpenAPI v3 for kubectl: each group/version's PATCH operations take fieldValidation."""
        versions: dict[str, list[tuple[Any, Any]]] = {}
        for resource in self._get_resources():
            if resource.plural and resource.version and resource in self.resources:
                prefix = (
                    f"apis/{resource.group}/{resource.version}"
                    if resource.group
                    else f"api/{resource.version}"
                )
                versions.setdefault(prefix, []).append((resource, self.resources[resource]))
        if path.rstrip("/") == "/openapi/v3":
            return {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}"} for gv in versions}}
        gv = path.removeprefix("/openapi/v3/")
        paths = {}
        for resource, info in versions.get(gv, []):
            scope = "namespaces/{namespace}/" if info.namespaced else ""
            paths[f"/{gv}/{scope}{resource.plural}/{{name}}"] = {
                "patch": {
                    "x-kubernetes-group-version-kind": {"group": resource.group, "version": resource.version, "kind": info.kind},
                    "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "OK"}},
                }
            }  # fmt: skip
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths}

    def _has_namespace(self, name: str) -> bool:
        key = (NAMESPACES, None, name)
        return key in self.objects and not self.objects[key].deleted

    def _as_the_server_would_store(self, request: kmock.Request) -> None:
        data, plural = request.data, request.resource.plural
        if plural in STATUS_SUBRESOURCE and request.action == kmock.action.UPDATE:
            if request.subresource == "status":
                for key in [k for k in data if k != "status"]:
                    del data[key]
            else:
                data.pop("status", None)
        if plural in SCHEMAS and request.action in (kmock.action.CREATE, kmock.action.UPDATE):
            pruned = prune_object(data, SCHEMAS[plural])
            data.clear()
            data.update(pruned)
        if request.action == kmock.action.CREATE:
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
                meta["name"] = f"{meta['generateName']}{suffix}"
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault(
                "creationTimestamp", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            )
            meta.setdefault("generation", 1)
            if request.namespace or plural != "namespaces":
                meta.setdefault("namespace", request.namespace)
            meta["resourceVersion"] = str(next(_versions))
        elif request.action == kmock.action.UPDATE:
            data.setdefault("metadata", {})["resourceVersion"] = str(next(_versions))

    def _serve_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        for version in spec.get("versions") or []:
            self.resources[f"{spec.get('group')}/{version['name']}/{names.get('plural')}"] = (
                kmock.ResourceInfo(
                    namespaced=spec.get("scope") == "Namespaced",
                    kind=names.get("kind"),
                    singular=names.get("singular"),
                    shortnames=set(names.get("shortNames") or []),
                    categories=set(names.get("categories") or []),
                    verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                    subresources=set((version.get("subresources") or {}).keys()),
                )
            )

    async def _serve_create(self, request: kmock.Request) -> Any:
        return kmock.Response(status=201, payload=await super()._serve_create(request))

    def seed_namespaces(self) -> None:
        self.writes = []
        for name in BUILTIN_NAMESPACES:
            self.objects[NAMESPACES, None, name] = {
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "uid": str(uuid.uuid4()), "resourceVersion": str(next(_versions))},
                "status": {"phase": "Active"},
            }  # fmt: skip


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
                kind = KINDS_BY_PLURAL.get(plural, plural.capitalize())
                emulator.resources[resource] = kmock.ResourceInfo(
                    namespaced=True,
                    kind=kind,
                    singular=plural[:-1],
                    verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                    subresources={"status"} if plural in STATUS_SUBRESOURCE else set(),
                )
            emulator.seed_namespaces()
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
            copy.deepcopy(dict(o.raw))
            for key, o in list(self.emulator.objects.items())
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

    def events_for(self, name: str) -> list[tuple[str, str, str]]:
        """(type, reason, message) of the Events posted about an object, oldest first."""
        events = [e for e in self.objects("events") if (e.get("involvedObject") or {}).get("name") == name]
        events.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
        return [(e.get("type", ""), e.get("reason", ""), e.get("message", "")) for e in events]

    def __exit__(self, *exc: object) -> None:
        assert self.stopping is not None
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)
