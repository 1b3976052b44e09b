"""Offline validation of OllamaAgent and TaskOrchestration objects, as the API server would do it.

1. defaults from the structural schema are applied (the API server defaults before validating);
2. the OpenAPI schema is checked (jsonschema), unknown fields rejected (kubectl's strict mode);
3. every `x-kubernetes-validations` CEL rule is evaluated with a real CEL implementation
   (`common-expression-language`), with `self` bound to the node, as the API server does;
4. rules CEL cannot express (a dependsOn cycle) are checked here, in the same message style;
   the operator runs the same function.

Each problem is reported with its field path, e.g. `spec.chunking: overlapTokens must be less
than maxTokens`, on one short line: values in messages are cut (crds.yaml_loader.short). Files
are read by crds.yaml_loader, as kubectl reads them and within bounds.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cel
import jsonschema

from aistack.crds.models import API_VERSION, DNS1123_SUBDOMAIN, OllamaAgent, TaskOrchestration
from aistack.crds.paths import field_path
from aistack.crds.schema import KINDS, resource_schema
from aistack.crds.yaml_loader import read_manifest_file, short, short_text

MAX_LISTED_ISSUES = 20  # an error line names the first ones and counts the rest


@dataclass(frozen=True, slots=True)
class Issue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidResourceError(ValueError):
    """A custom resource that the API server (or the operator) would reject."""

    def __init__(self, kind: str, name: str, issues: list[Issue]) -> None:
        self.kind, self.name, self.issues = kind, name, issues
        listed = "; ".join(str(i) for i in issues[:MAX_LISTED_ISSUES])
        if len(issues) > MAX_LISTED_ISSUES:
            listed += f"; and {len(issues) - MAX_LISTED_ISSUES} more"
        super().__init__(f'{short_text(kind, 40)} "{short_text(name)}" is invalid: {listed}')


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Fill schema defaults into present objects, recursively (returns a new value)."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for key, sub in schema["properties"].items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = apply_defaults(out[key], sub)
        return out
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(v, schema["items"]) for v in value]
    return value


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy that rejects unknown fields, like `kubectl apply --validate=strict`."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    if "items" in schema:
        schema["items"] = _strict(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _strict(schema["additionalProperties"])
    return schema


@functools.cache
def _validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(_strict(resource_schema(kind)))


@functools.cache
def _program(rule: str) -> Any:
    return cel.compile(rule)


def _message(error: jsonschema.ValidationError) -> str:
    """jsonschema's message with the offending value cut short (it embeds its whole repr)."""
    return error.message.replace(repr(error.instance), short(error.instance))  # a short one stays whole


def _schema_issues(obj: dict[str, Any], kind: str) -> list[Issue]:
    issues = []
    for error in sorted(_validator(kind).iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            listed = ", ".join(short_text(k, 40) for k in extra[:10]) + (" ..." if len(extra) > 10 else "")
            issues.append(Issue(field_path(path), f"unknown field(s) {listed}"))
        elif error.validator == "required":
            missing = error.message.split("'")[1]
            issues.append(Issue(field_path([*path, missing]), "Required value"))
        elif error.validator == "enum":
            issues.append(
                Issue(
                    field_path(path),
                    f"Unsupported value {short(error.instance)}: supported values: {error.validator_value}",
                )
            )
        elif error.validator == "pattern":
            issues.append(
                Issue(
                    field_path(path),
                    f"Invalid value {short(error.instance)}: should match '{error.validator_value}'",
                )
            )
        else:
            issues.append(Issue(field_path(path), f"Invalid value: {_message(error)}"))
    return issues


def _cel_issues(value: Any, schema: dict[str, Any], path: list[Any]) -> list[Issue]:
    issues = []
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            ok = _program(rule["rule"]).execute({"self": value})
        except Exception as exc:  # evaluation errors reject the object, as in the API server
            issues.append(Issue(field_path(path), f"{rule['message']} (rule error: {short_text(str(exc))})"))
            continue
        if ok is not True:
            issues.append(Issue(field_path(path), rule["message"]))
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                issues += _cel_issues(value[key], sub, [*path, key])
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            issues += _cel_issues(item, schema["items"], [*path, i])
    return issues


def dependency_cycle(spec: dict[str, Any]) -> list[str] | None:
    """A dependsOn cycle of two or more stages, as a list of names, or None.

    Duplicate names and a stage naming itself are CEL rules of the CRD, reported once there: with
    duplicates there is no graph to speak of, and a self-edge is left out here.
    """
    stages = spec.get("pipeline") or []
    names = [s.get("name") or s.get("agentRef") for s in stages]
    if len(set(names)) != len(names):
        return None
    edges: dict[str, list[str]] = {}
    for i, (name, stage) in enumerate(zip(names, stages, strict=True)):
        default = [names[i - 1]] if i else []
        edges[name] = [d for d in stage.get("dependsOn", default) if d != name]
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        trail.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                return [*trail[trail.index(nxt) :], nxt]
            if nxt in edges and not state.get(nxt) and (found := visit(nxt)):
                return found
        state[node] = 2
        trail.pop()
        return None

    for name in names:
        if not state.get(name) and (found := visit(name)):
            return found
    return None


def _semantic_issues(kind: str, obj: dict[str, Any]) -> list[Issue]:
    """Rules CEL cannot express; the operator applies them too."""
    issues: list[Issue] = []
    spec = obj.get("spec")
    if kind == "TaskOrchestration" and isinstance(spec, dict) and (cycle := dependency_cycle(spec)):
        issues.append(Issue("spec.pipeline", f"dependsOn forms a cycle: {' -> '.join(cycle)}"))
    return issues


def validate_object(obj: Any) -> list[Issue]:
    """Every problem with one object; an empty list means the API server would accept it."""
    return _validate(obj)[1]


def _validate(obj: Any) -> tuple[dict[str, Any], list[Issue]]:
    """The object with schema defaults applied (as far as it got), and its problems."""
    if not isinstance(obj, dict):
        return {}, [Issue("", f"expected a mapping, got {type(obj).__name__}")]
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if kind not in KINDS:
        return obj, [Issue("kind", f"Unsupported value {short(kind)}: supported values: {sorted(KINDS)}")]
    if api_version != API_VERSION:
        return obj, [Issue("apiVersion", f"Unsupported value {short(api_version)}: expected {API_VERSION!r}")]
    issues = []
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        issues.append(Issue("metadata.name", "Required value"))
    elif len(name) > 253 or not re.match(DNS1123_SUBDOMAIN, name):
        # the API server's own check; the CRD's CEL rules then narrow it (see models.NAME_RULES)
        issues.append(
            Issue(
                "metadata.name",
                f"Invalid value {short(name)}: a lowercase RFC 1123 subdomain must consist of lower case "
                "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            )
        )
    schema = resource_schema(kind)
    defaulted = apply_defaults(obj, schema)
    issues += _schema_issues(defaulted, kind)
    if not issues:  # CEL assumes a schema-valid object, as in the API server
        issues += _cel_issues(defaulted, schema, [])
        issues += _semantic_issues(kind, defaulted)
    return defaulted, issues


def parse(obj: dict[str, Any]) -> OllamaAgent | TaskOrchestration:
    """Validate and return the typed model, with schema defaults applied."""
    defaulted, issues = _validate(obj)
    kind = obj.get("kind", "object") if isinstance(obj, dict) else "object"
    name = (obj.get("metadata") or {}).get("name", "?") if isinstance(obj, dict) else "?"
    if issues:
        raise InvalidResourceError(str(kind), str(name), issues)
    model = OllamaAgent if kind == "OllamaAgent" else TaskOrchestration
    return model.model_validate(defaulted)


def load_file(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file (empty documents skipped), read as kubectl reads them, within
    bounds; a ValueError (crds.yaml_loader.YamlLoadError) names the file and what is wrong."""
    return read_manifest_file(path)
