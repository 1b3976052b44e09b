"""Structural OpenAPI v3 schemas and CustomResourceDefinitions generated from the models."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from aistack.crds.models import (
    GROUP,
    NAME_RULES,
    VERSION,
    OllamaAgentSpec,
    OllamaAgentStatus,
    TaskOrchestrationSpec,
    TaskOrchestrationStatus,
)

CRD_DIR = Path(__file__).resolve().parent

KINDS: dict[str, dict[str, Any]] = {
    "OllamaAgent": {
        "plural": "ollamaagents",
        "singular": "ollamaagent",
        "short_names": ["oagent", "oa"],
        "spec": OllamaAgentSpec,
        "status": OllamaAgentStatus,
        "columns": [
            {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
            {"name": "Role", "type": "string", "jsonPath": ".spec.role"},
            {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
            {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    },
    "TaskOrchestration": {
        "plural": "taskorchestrations",
        "singular": "taskorchestration",
        "short_names": ["tasko", "to"],
        "spec": TaskOrchestrationSpec,
        "status": TaskOrchestrationStatus,
        "columns": [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Progress", "type": "string", "jsonPath": ".status.progress.text"},
            {"name": "Tokens", "type": "integer", "jsonPath": ".status.tokens.total"},
            {"name": "Workflow", "type": "string", "jsonPath": ".status.workflowName", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    },
}

_DROP = {"title", "additionalProperties"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """pydantic JSON schema -> Kubernetes structural schema: refs inlined, Optional unwrapped."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        node = {**target, **node}
    if "anyOf" in node:  # Optional[X] -> X; the null branch means "may be omitted"
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {branches}")
        node = {**_structural(branches[0], defs), **node}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("default", 0) is None:
        del node["default"]
    additional = node.get("additionalProperties")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {k: _structural(v, defs) for k, v in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("type") == "object" and "properties" not in out:
        if isinstance(additional, dict) and additional:  # map[string]X
            out["additionalProperties"] = _structural(additional, defs)
        else:  # free-form object
            out["x-kubernetes-preserve-unknown-fields"] = True
    if "x-kubernetes-preserve-unknown-fields" in out:
        out.setdefault("type", "object")
    return out


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


@functools.cache
def resource_schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of a kind: apiVersion, kind, metadata, spec and status.

    Cached (the operator validates on every reconcile): treat the result as read-only.
    """
    info = KINDS[kind]
    spec = structural_schema(info["spec"])
    spec["description"] = f"Desired state of the {kind}."
    status = structural_schema(info["status"])
    status["description"] = f"Observed state of the {kind}, written by the aistack operator."
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": NAME_RULES[kind],
    }


def crd(kind: str) -> dict[str, Any]:
    info = KINDS[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info['plural']}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "aistack"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": info["plural"],
                "singular": info["singular"],
                "shortNames": info["short_names"],
                "categories": ["aistack"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": info["columns"],
                    "schema": {"openAPIV3Schema": resource_schema(kind)},
                }
            ],
        },
    }


def crd_path(kind: str) -> Path:
    return CRD_DIR / f"{GROUP}_{KINDS[kind]['plural']}.yaml"


def render(kind: str) -> str:
    header = "# Generated by `aistack crds generate` from crds/models.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=120)


def generate(check: bool = False) -> list[Path]:
    """Write crds/*.yaml; with check=True write nothing and return the stale files."""
    stale = []
    for kind in KINDS:
        path, text = crd_path(kind), render(kind)
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not check:
                path.write_text(text)
    return stale
