"""Validating compiled Argo objects without depending on anything outside the repository.

When Argo's published JSON schema sits beside the checkout (SCHEMA_BESIDE, the one optional
location outside the repository a test may read), objects are validated against it. Otherwise
they go through Hera's generated Argo models (`hera.workflows.models`), made strict: an object
must parse, and dumping the parsed model must give back exactly the object, so an unknown or
misspelt field fails as it would against the schema. `CHECK` says which of the two ran.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
from conftest import ROOT
from hera.workflows import models

SCHEMA_BESIDE = ROOT.parent / "shared" / "schemas" / "argo" / "schema.json"
CHECK = (
    f"Argo's JSON schema ({SCHEMA_BESIDE})"
    if SCHEMA_BESIDE.is_file()
    else "Hera's generated Argo models, strict (Argo's JSON schema is not beside the repository)"
)


@functools.cache
def _definitions(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())["definitions"]


def _differences(sent: Any, back: Any, path: str = "") -> list[str]:
    if isinstance(sent, dict) and isinstance(back, dict):
        out = [f"{path}.{k}: unknown field" for k in sent if k not in back]
        return out + [d for k in sent if k in back for d in _differences(sent[k], back[k], f"{path}.{k}")]
    if isinstance(sent, list) and isinstance(back, list) and len(sent) == len(back):
        return [
            d
            for i, (a, b) in enumerate(zip(sent, back, strict=True))
            for d in _differences(a, b, f"{path}[{i}]")
        ]
    return [] if sent == back else [f"{path}: {sent!r} is read as {back!r}"]


def validate_with_hera(obj: dict[str, Any]) -> None:
    model = getattr(models, obj["kind"])
    parsed = model.model_validate(obj)  # raises pydantic.ValidationError on a wrong type
    back = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    problems = _differences(obj, back)
    if problems:
        raise AssertionError(f"{obj['kind']} is not a valid Argo object: {'; '.join(problems[:10])}")


def argo_validate(obj: dict[str, Any], schema: Path | None = SCHEMA_BESIDE) -> str:
    """Validate a Workflow, CronWorkflow or WorkflowTemplate; returns which check ran."""
    if schema is not None and schema.is_file():
        definitions = _definitions(schema)
        ref = {
            "$ref": f"#/definitions/io.argoproj.workflow.v1alpha1.{obj['kind']}",
            "definitions": definitions,
        }
        jsonschema.Draft7Validator(ref).validate(obj)
        return "argo-json-schema"
    validate_with_hera(obj)
    return "hera-models"
