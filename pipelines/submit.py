"""Submit a compiled task: to the Kubernetes API (kubeconfig), or to the Argo Server when
`ARGO_SERVER` is set (Hera's WorkflowsService, token from `ARGO_TOKEN`)."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from hera.workflows import CronWorkflow, Workflow

ARGO_GROUP, ARGO_VERSION = "argoproj.io", "v1alpha1"


def _namespace(kubeconfig: str | None) -> str:
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except (config.ConfigException, OSError):
        return "default"
    return (active or {}).get("context", {}).get("namespace") or "default"


def submit(
    wf: Workflow | CronWorkflow, namespace: str | None = None, kubeconfig: str | None = None
) -> dict[str, Any]:
    """Create the Workflow or CronWorkflow; returns the created object (with its server-set name)."""
    if os.environ.get("ARGO_SERVER"):
        from hera.shared import global_config

        global_config.host = os.environ["ARGO_SERVER"]
        if os.environ.get("ARGO_TOKEN"):
            global_config.token = os.environ["ARGO_TOKEN"]
        if namespace:
            wf.namespace = namespace
        created = wf.create()
        return created.model_dump(by_alias=True, exclude_none=True)

    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    api = client.CustomObjectsApi(config.new_client_from_config(config_file=kubeconfig))
    body = wf.to_dict()
    ns = namespace or body["metadata"].get("namespace") or _namespace(kubeconfig)
    body["metadata"]["namespace"] = ns
    plural = "cronworkflows" if body["kind"] == "CronWorkflow" else "workflows"
    try:
        created = api.create_namespaced_custom_object(ARGO_GROUP, ARGO_VERSION, ns, plural, body)
        created["aistackAction"] = "created"
        return created
    except ApiException as exc:
        if exc.status == 409 and body["kind"] == "CronWorkflow":  # one schedule per task: update it
            return _replace(api, ns, plural, body)
        raise RuntimeError(f"creating {body['kind']} in namespace {ns!r} failed: {_detail(exc)}") from exc


def _detail(exc: Any) -> str:
    detail = exc.reason
    with contextlib.suppress(TypeError, ValueError):
        detail = json.loads(exc.body).get("message") or detail
    return f"HTTP {exc.status}: {detail}"


def _replace(api: Any, ns: str, plural: str, body: dict[str, Any]) -> dict[str, Any]:
    """Replace an existing object (as `kubectl apply` would converge on it), keeping its resourceVersion."""
    from kubernetes.client.exceptions import ApiException

    name = body["metadata"]["name"]
    task = (body["metadata"].get("labels") or {}).get("ai.stack/task")
    try:
        current = api.get_namespaced_custom_object(ARGO_GROUP, ARGO_VERSION, ns, plural, name)
        theirs = (current["metadata"].get("labels") or {}).get("ai.stack/task")
        if theirs != task:  # someone else's object by that name: never overwrite it
            raise RuntimeError(
                f"{body['kind']} {ns}/{name} exists and is not task {task!r}'s (its ai.stack/task label is "
                f"{theirs!r}); delete it or give --name"
            )
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        replaced = api.replace_namespaced_custom_object(ARGO_GROUP, ARGO_VERSION, ns, plural, name, body)
    except ApiException as exc:
        raise RuntimeError(f"updating {body['kind']} {ns}/{name} failed: {_detail(exc)}") from exc
    replaced["aistackAction"] = "configured"
    return replaced
