"""Where submitted tasks go: TaskOrchestration CRs in the cluster, or the local runner.

Both backends take the same validated object (crds.validation: the CRD's schema, defaults and
CEL rules) and answer with the same shape: the object with its `status`, as `kubectl get -o json`
shows it.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from aistack.crds.models import OllamaAgent, TaskOrchestration
from aistack.crds.validation import InvalidResourceError, parse
from aistack.etl.storage import open_storage
from aistack.gateway.state import Key, RecordStore
from aistack.messages import describe

GROUP, VERSION, PLURAL = "ai.stack", "v1alpha1", "taskorchestrations"
API_VERSION = f"{GROUP}/{VERSION}"


class GatewayError(Exception):
    """A request the gateway refuses or cannot serve: HTTP status, Kubernetes-style reason,
    message, details (answered as a Status object)."""

    def __init__(self, status: int, reason: str, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.details = status, reason, message, details or []


def validated(body: dict[str, Any], namespace: str, name: str) -> dict[str, Any]:
    """The submitted task as a TaskOrchestration object, checked like `kubectl apply` would be."""
    obj = {
        "apiVersion": API_VERSION,
        "kind": "TaskOrchestration",
        "metadata": {
            "name": name,
            "namespace": namespace,
            **{k: v for k, v in (body.get("metadata") or {}).items() if k in ("labels", "annotations")},
        },
        "spec": body.get("spec"),
    }
    for key, expected in (("apiVersion", API_VERSION), ("kind", "TaskOrchestration")):
        if body.get(key) not in (None, expected):
            raise GatewayError(422, "Invalid", f"{key} must be {expected!r}, not {body.get(key)!r}")
    try:
        task = parse(obj)
    except InvalidResourceError as e:  # Kubernetes' message: 'TaskOrchestration "x" is invalid: spec...'
        raise GatewayError(422, "Invalid", str(e), [str(i) for i in e.issues]) from e
    # the object as the API server would store it: with the CRD's defaults applied
    return task.model_dump(mode="json", by_alias=True, exclude_none=True)


class TaskBackend(Protocol):
    def create(self, obj: dict[str, Any], submitted_by: str) -> dict[str, Any]: ...
    def get(self, namespace: str, name: str) -> dict[str, Any]: ...
    def list(self, namespace: str) -> list[dict[str, Any]]: ...
    def delete(self, namespace: str, name: str) -> dict[str, Any]: ...
    def ready(self) -> None: ...


class ClusterTasks:
    """TaskOrchestration CRs through the Kubernetes API; the operator does the rest."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._api = client.CustomObjectsApi(api_client)
        self._version = client.VersionApi(api_client)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn()
        except ApiException as e:
            try:
                status = json.loads(e.body or "{}")
            except json.JSONDecodeError:
                status = {}
            code = e.status if e.status in (400, 403, 404, 409, 422, 429) else 502
            message = status.get("message") or f"{what}: API server answered {e.status} {e.reason}"
            causes = [
                f"{c.get('field', '')}: {c.get('message', '')}"
                for c in (status.get("details") or {}).get("causes", [])
            ]
            raise GatewayError(code, status.get("reason") or "BadGateway", message, causes) from e

    def create(self, obj: dict[str, Any], submitted_by: str) -> dict[str, Any]:
        meta = obj["metadata"]
        meta.setdefault("annotations", {})["ai.stack/submitted-by"] = submitted_by
        return self._call(
            "create",
            lambda: self._api.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, obj),
        )

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        task = self._call(
            "get", lambda: self._api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        )
        uri = (task.get("status") or {}).get("outputs")
        if (task.get("status") or {}).get("phase") == "Succeeded" and isinstance(uri, str):
            task["results"] = self._results(uri)
        return task

    @staticmethod
    def _results(uri: str) -> dict[str, Any]:
        """The first answers of a finished run, from its summary.json (read with the gateway's own
        S3 identity: IRSA in prod)."""
        try:
            return {"uri": uri, "outputs": list(_first_outputs(uri))}
        except Exception as e:  # the task is still shown; the preview says why it is missing
            return {"uri": uri, "error": f"cannot read {uri.rstrip('/')}/summary.json: {describe(e)}"}

    def list(self, namespace: str) -> list[dict[str, Any]]:
        found = self._call(
            "list", lambda: self._api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        )
        return list(found.get("items", []))

    def delete(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(
            "delete",
            lambda: self._api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
        )

    def ready(self) -> None:
        self._call("version", self._version.get_code)


@functools.lru_cache(maxsize=256)  # a published run never changes; failures are not cached
def _first_outputs(uri: str) -> tuple[Any, ...]:
    return tuple(json.loads(open_storage(uri).read_bytes("summary.json")).get("outputs", [])[:5])


RunFn = Callable[..., Any]


def _inside(uri: str, root: str) -> bool:
    """Whether `uri` names a place under `root` as storage resolves it (percent-encoding decoded,
    `..` and symlinks resolved), not merely as the string reads."""
    import os

    from aistack.etl.errors import EtlError
    from aistack.etl.localfs import inside
    from aistack.etl.storage import LocalStorage

    try:
        target, base = open_storage(uri), open_storage(root)
    except EtlError:
        return False
    if isinstance(target, LocalStorage) and isinstance(base, LocalStorage):
        return inside(os.path.realpath(target.root), os.path.realpath(base.root))
    if isinstance(target, LocalStorage) or isinstance(base, LocalStorage):
        return False
    return target.uri == base.uri or (
        target.uri.startswith(base.uri.rstrip("/") + "/") and ".." not in uri.split("/")
    )


class LocalTasks:
    """Runs tasks with the local runner on a small thread pool. Each task's record (object and
    status) is a JSON file under `state_dir` (gateway.state), written on every change, so a
    restarted gateway still lists every task and re-queues those that had not finished (the
    result cache makes the re-run cheap: finished model calls are not repeated).

    A record carries a uid, as a Kubernetes object does: a run writes only to the record it was
    started for, so a task deleted and created again under its name starts clean. Deleting a
    task cancels its run (before its next step); so does stopping the gateway, whose unfinished
    records are then re-queued by the next start."""

    def __init__(
        self,
        agents: dict[str, OllamaAgent],
        out: str,
        state_dir: Path,
        workers: int = 1,
        run: RunFn | None = None,
        model_host: str | None = None,
    ) -> None:
        from aistack.pipelines.local import run_task

        self.agents, self.out, self.model_host = agents, out.rstrip("/"), model_host
        self._run = run or run_task
        self._lock = threading.Lock()
        self._store = RecordStore(state_dir)
        self._records: dict[Key, dict[str, Any]] = {}
        self._cancels: dict[str, threading.Event] = {}  # by uid, for every queued or running run
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aistack-task")
        for key, record in self._store.load().items():
            uid = record["metadata"].setdefault("uid", str(uuid.uuid4()))  # records of older gateways
            self._records[key] = record
            if record.get("status", {}).get("phase") in ("Pending", "Running"):
                self._set_status(key, uid, phase="Pending", message="re-queued after a gateway restart")
                self._queue(key, uid)

    def _queue(self, key: Key, uid: str) -> None:
        self._cancels[uid] = threading.Event()
        self._pool.submit(self._execute, key, uid)

    def _set_status(self, key: Key, uid: str, **changes: Any) -> None:
        with self._lock:
            record = self._records.get(key)
            if record is None or record["metadata"].get("uid") != uid:  # deleted, maybe re-created
                return
            status = record.setdefault("status", {})
            status.update(changes)
            phase = status.get("phase")
            if phase in ("Succeeded", "Failed"):
                status["conditions"] = [
                    {"type": phase, "status": "True", "reason": phase, "message": status.get("message", ""),
                     "lastTransitionTime": _now()}
                ]  # fmt: skip
            self._store.save(key, record)

    def create(self, obj: dict[str, Any], submitted_by: str) -> dict[str, Any]:
        task = parse(obj)
        assert isinstance(task, TaskOrchestration)
        missing = sorted(set(task.spec.agent_refs()) - set(self.agents))
        if missing:
            raise GatewayError(
                422, "Invalid", f"TaskOrchestration {obj['metadata']['name']!r} refers to undefined OllamaAgents: "
                f"{', '.join(missing)}; this gateway has {', '.join(sorted(self.agents)) or 'none'}",
            )  # fmt: skip
        cache = task.spec.cache.uri
        if cache and not _inside(cache, self.out):
            raise GatewayError(403, "Forbidden", f"spec.cache.uri: {cache} is outside this gateway's --out "
                               f"({self.out}); leave it unset (the cache is kept beside the outputs)")  # fmt: skip
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        uid = str(uuid.uuid4())
        with self._lock:
            if key in self._records:
                raise GatewayError(409, "AlreadyExists", f'taskorchestrations "{key[1]}" already exists')
            obj["metadata"].setdefault("annotations", {})["ai.stack/submitted-by"] = submitted_by
            obj["metadata"]["creationTimestamp"] = _now()
            obj["metadata"]["uid"] = uid
            obj["status"] = {"phase": "Pending", "message": "queued for the local runner"}
            self._records[key] = obj
            self._store.save(key, obj)
            self._queue(key, uid)
        return self.get(*key)

    def _execute(self, key: Key, uid: str) -> None:
        try:
            self._execute_run(key, uid, self._cancels[uid])
        finally:
            with self._lock:
                self._cancels.pop(uid, None)

    def _execute_run(self, key: Key, uid: str, cancel: threading.Event) -> None:
        # the local runner (hera, the model servers) only where a task runs: a gateway that
        # starts, or forwards to a cluster, never loads it
        from aistack.pipelines.local import RunCancelled

        with self._lock:
            record = self._records.get(key)
            if record is None or record["metadata"].get("uid") != uid or cancel.is_set():
                return
            task = parse({k: v for k, v in record.items() if k != "status"})
        done = {"steps": 0}

        def on_task(name: str, event: str) -> None:
            if event != "done":
                return
            done["steps"] += 1
            self._set_status(
                key, uid, progress={"done": done["steps"], "text": f"{done['steps']} steps done, last {name}"}
            )

        self._set_status(key, uid, phase="Running", startTime=_now(), message="running on the local runner")
        try:
            run = self._run(
                task, self.agents, out=f"{self.out}/{key[0]}/{key[1]}", on_task=on_task, cancel=cancel
            )
        except RunCancelled:  # deleted (its record is gone) or the gateway is stopping (re-queued)
            return
        except Exception as e:  # reported in status, as the operator does for a failed workflow
            self._set_status(
                key, uid, phase="Failed", message=f"{type(e).__name__}: {describe(e)}", completionTime=_now()
            )
            return
        published = json.loads(run.results.get("publish", "{}"))
        try:  # the first final answers, so that a caller following over HTTP sees the result
            summary = json.loads(open_storage(run.outputs).read_bytes("summary.json"))
        except Exception as e:  # the run succeeded; only the preview is missing
            summary = {"outputs": [f"(summary.json unreadable: {describe(e)})"]}
        self._set_status(
            key,
            uid,
            phase="Succeeded",
            message=f"run {run.name} finished in {run.seconds:.1f}s",
            completionTime=_now(),
            workflowName=run.name,
            outputs={"uri": run.outputs, "results": summary.get("outputs", [])[:5]},
            tokens={"prompt": published.get("prompt_tokens", 0), "eval": published.get("eval_tokens", 0)},
        )

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            record = self._records.get((namespace, name))
            if record is None:
                raise GatewayError(
                    404, "NotFound", f'taskorchestrations "{name}" not found in namespace "{namespace}"'
                )
            return json.loads(json.dumps(record))

    def list(self, namespace: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                json.loads(json.dumps(r)) for (ns, _), r in sorted(self._records.items()) if ns == namespace
            ]

    def delete(self, namespace: str, name: str) -> dict[str, Any]:
        """Forget the task and cancel its run: a running run stops before its next step and
        frees its worker (outputs already written stay where they are)."""
        with self._lock:
            record = self._records.pop((namespace, name), None)
            if record is None:
                raise GatewayError(
                    404, "NotFound", f'taskorchestrations "{name}" not found in namespace "{namespace}"'
                )
            self._store.delete((namespace, name))
            cancel = self._cancels.get(record["metadata"].get("uid", ""))
            if cancel is not None:
                cancel.set()
        return record

    def ready(self) -> None:
        """Ready when the model server the tasks and agents use answers."""
        from aistack.pipelines.local import ollama_reachable

        if self.model_host is not None and not ollama_reachable(self.model_host):
            raise GatewayError(
                503, "ServiceUnavailable", f"the model server at {self.model_host} does not answer"
            )

    def close(self) -> None:
        """Stop: queued runs are dropped and running ones cancelled before their next step;
        their records stay Pending/Running, so the next start re-queues them."""
        with self._lock:
            for cancel in self._cancels.values():
                cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
