"""The operator's Kubernetes API calls, all through the `kubernetes` client.

Every call the operator makes is listed in CALLS (group, resource, verb): the RBAC manifest in
infra/base/operator/ is checked against it by a test, and the functions below are the only
callers. Writes are creates (409 = someone, maybe our previous incarnation, did it already:
adopt) and JSON merge patches (no strategic merge: kmock and plain clients handle it the same).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

ARGO = ("argoproj.io", "v1alpha1")
AISTACK = ("ai.stack", "v1alpha1")

# (apiGroup, resource, verb) of every request below; kopf itself adds watch/list/patch on the CRs
CALLS: set[tuple[str, str, str]] = {
    ("ai.stack", "ollamaagents", "get"),
    ("argoproj.io", "workflows", "create"),
    ("argoproj.io", "workflows", "get"),
    ("argoproj.io", "workflows", "list"),
    ("argoproj.io", "cronworkflows", "create"),
    ("argoproj.io", "cronworkflows", "get"),
    ("argoproj.io", "cronworkflows", "delete"),
    ("apps", "deployments", "create"),
    ("apps", "deployments", "get"),
    ("apps", "deployments", "patch"),
    ("", "services", "create"),
    ("", "persistentvolumeclaims", "create"),
}
# kopf.adopt() sets blockOwnerDeletion: true on what the operator creates; with the
# OwnerReferencesPermissionEnforcement admission plugin (on by default in OpenShift) that needs
# `update` on the owner's finalizers subresource, or the create is refused (403).
OWNER_FINALIZERS: set[tuple[str, str, str]] = {
    ("ai.stack", "taskorchestrations/finalizers", "update"),
    ("ai.stack", "ollamaagents/finalizers", "update"),
}


@functools.cache
def api_client(config_file: str | None = None) -> client.ApiClient:
    """In a pod, its service account; elsewhere the kubeconfig (`config_file`, or the default)."""
    if config_file is None:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    config.load_kube_config(config_file=config_file)
    return client.ApiClient()


def custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client())


def _or_none(read: Callable[..., Any], *args: Any) -> Any:
    """The object, or None when the API answers 404."""
    try:
        return read(*args)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def get_agent(namespace: str, name: str) -> dict[str, Any] | None:
    return _or_none(custom().get_namespaced_custom_object, *AISTACK, namespace, "ollamaagents", name)


def create_or_get_workflow(namespace: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create the Workflow/CronWorkflow; on 409 return the existing one. (object, created)."""
    plural = "cronworkflows" if body["kind"] == "CronWorkflow" else "workflows"
    try:
        return custom().create_namespaced_custom_object(*ARGO, namespace, plural, body), True
    except ApiException as exc:
        if exc.status != 409:
            raise
    return custom().get_namespaced_custom_object(*ARGO, namespace, plural, body["metadata"]["name"]), False


def delete_cron_workflow(namespace: str, name: str) -> bool:
    """Delete a CronWorkflow (its schedule stops; runs it started are left to finish); False if gone."""
    try:
        custom().delete_namespaced_custom_object(*ARGO, namespace, "cronworkflows", name)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def get_workflow(namespace: str, name: str) -> dict[str, Any] | None:
    return _or_none(custom().get_namespaced_custom_object, *ARGO, namespace, "workflows", name)


def latest_cron_run(namespace: str, cron_name: str) -> dict[str, Any] | None:
    """The newest Workflow started by a CronWorkflow (filtered here; selectors are not trusted)."""
    items = (
        custom()
        .list_namespaced_custom_object(
            *ARGO, namespace, "workflows", label_selector=f"workflows.argoproj.io/cron-workflow={cron_name}"
        )
        .get("items", [])
    )
    runs = [
        w
        for w in items
        if (w["metadata"].get("labels") or {}).get("workflows.argoproj.io/cron-workflow") == cron_name
    ]
    return max(runs, key=lambda w: w["metadata"].get("creationTimestamp") or "", default=None)


def apply_workload(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a PVC, Service or Deployment; a Deployment that exists gets its spec merge-patched."""
    kind, name = body["kind"], body["metadata"]["name"]
    core, apps = client.CoreV1Api(api_client()), client.AppsV1Api(api_client())
    create = {
        "PersistentVolumeClaim": core.create_namespaced_persistent_volume_claim,
        "Service": core.create_namespaced_service,
        "Deployment": apps.create_namespaced_deployment,
    }[kind]
    try:
        return create(namespace, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
    if kind == "Deployment":  # roll out spec changes
        return apps.patch_namespaced_deployment(
            name, namespace, {"spec": body["spec"]}, _content_type="application/merge-patch+json"
        )
    return body  # PVCs and Services are immutable enough: keep what exists


def get_deployment(namespace: str, name: str) -> dict[str, Any] | None:
    found = _or_none(client.AppsV1Api(api_client()).read_namespaced_deployment, name, namespace)
    return found.to_dict() if found is not None else None
