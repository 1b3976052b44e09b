"""Kubernetes objects the operator owns for a service-mode OllamaAgent: a model-cache PVC, a
Deployment whose init container pulls the model (retried, its logs visible, never a silent
postStart hook), and a Service on 11434. Pure functions of the agent, so they are tested
without a cluster."""

from __future__ import annotations

from typing import Any

from aistack.crds.models import OllamaAgentSpec
from aistack.pipelines.compile import GPU_NODE_SELECTOR, GPU_RESOURCE, OLLAMA_PORT, ollama_resources

MODELS_DIR = "/models"
LABEL = "ai.stack/agent"


def _labels(name: str) -> dict[str, str]:
    return {LABEL: name, "app.kubernetes.io/name": "ollama", "app.kubernetes.io/part-of": "aistack"}


def pvc_name(name: str, spec: OllamaAgentSpec) -> str:
    return spec.model_cache.pvc_name or f"{name}-models"


def model_cache_pvc(name: str, spec: OllamaAgentSpec) -> dict[str, Any] | None:
    """The PVC the operator creates, or None when the agent names an existing one."""
    if spec.model_cache.pvc_name:
        return None
    pvc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": pvc_name(name, spec), "labels": _labels(name)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.model_cache.size}},
        },
    }
    if spec.model_cache.storage_class_name:
        pvc["spec"]["storageClassName"] = spec.model_cache.storage_class_name
    return pvc


def deployment(name: str, spec: OllamaAgentSpec) -> dict[str, Any]:
    env = [
        {"name": "OLLAMA_HOST", "value": f"0.0.0.0:{OLLAMA_PORT}"},
        {"name": "OLLAMA_MODELS", "value": MODELS_DIR},
        {"name": "OLLAMA_KEEP_ALIVE", "value": spec.keep_alive},
        {"name": "OLLAMA_NUM_PARALLEL", "value": str(spec.num_parallel)},
        {"name": "HOME", "value": "/tmp"},
    ]
    env += [{"name": e.name, "value": e.value} for e in spec.env]
    if spec.context_tokens:
        env.append({"name": "OLLAMA_CONTEXT_LENGTH", "value": str(spec.context_tokens)})
    security = {
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = [{"name": "models", "mountPath": MODELS_DIR}]
    # the pull runs its own server on a side port, retries, and fails the pod if it never succeeds
    pull = (
        "OLLAMA_HOST=127.0.0.1:11435 ollama serve & "
        f"for i in 1 2 3 4 5; do OLLAMA_HOST=127.0.0.1:11435 ollama pull {spec.model} && exit 0; sleep $((i * 10)); done; exit 1"
    )
    pod: dict[str, Any] = {
        "securityContext": {"fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [
            {
                "name": "pull-model",
                "image": spec.image,
                "command": ["/bin/sh", "-c", pull],
                "env": env[1:],
                "volumeMounts": mounts,
                "securityContext": security,
            }
        ],
        "containers": [
            {
                "name": "ollama",
                "image": spec.image,
                "ports": [{"name": "http", "containerPort": OLLAMA_PORT}],
                "env": env,
                "resources": ollama_resources(spec),
                "volumeMounts": mounts,
                "securityContext": security,
                # ready only once the model is present, not merely when the server answers
                "readinessProbe": {"exec": {"command": ["ollama", "show", spec.model]}, "periodSeconds": 10},
                "livenessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 30},
            }
        ],
        "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": pvc_name(name, spec)}}],
    }
    if spec.resources.gpu:
        pod["nodeSelector"] = spec.node_selector or GPU_NODE_SELECTOR
        pod["tolerations"] = (
            [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
            if spec.tolerations
            else [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
        )
    elif spec.node_selector:
        pod["nodeSelector"] = spec.node_selector
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{name}-ollama", "labels": _labels(name)},
        "spec": {
            "replicas": spec.replicas or 1,
            "selector": {"matchLabels": {LABEL: name}},
            "template": {"metadata": {"labels": _labels(name)}, "spec": pod},
        },
    }


def service(name: str) -> dict[str, Any]:
    """Named after the agent: tasks call http://<agent>.<namespace>.svc:11434."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": _labels(name)},
        "spec": {
            "selector": {LABEL: name},
            "ports": [{"name": "http", "port": OLLAMA_PORT, "targetPort": "http"}],
        },
    }
