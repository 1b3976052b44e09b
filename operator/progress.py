"""A Workflow's status, mirrored into a TaskOrchestration's status (pure functions)."""

from __future__ import annotations

import datetime
import json
from typing import Any

PHASES = {
    "Pending": "Submitted",
    "Running": "Running",
    "Succeeded": "Succeeded",
    "Failed": "Failed",
    "Error": "Failed",
}
TERMINAL = {"Succeeded", "Failed"}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, ok: bool, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now(),
        "observedGeneration": generation,
    }


def merge_conditions(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace conditions by type; keep lastTransitionTime when the status did not change."""
    by_type = {c["type"]: c for c in old or []}
    for c in new:
        prev = by_type.get(c["type"])
        if prev and prev.get("status") == c["status"]:
            c = {**c, "lastTransitionTime": prev.get("lastTransitionTime", c["lastTransitionTime"])}
        by_type[c["type"]] = c
    return list(by_type.values())


def _result(node: dict[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads((node.get("outputs") or {}).get("result") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def phase_message(
    workflow: dict[str, Any], phase: str, done: int, total: int, outputs: str | None, reason: str
) -> str:
    """status.message for a phase: it always says what the run is doing now, never an older step."""
    name = f"{workflow.get('kind', 'Workflow')} {workflow['metadata']['name']}"
    if phase == "Succeeded":
        return f"{name} succeeded" + (f"; outputs at {outputs}" if outputs else "")
    if phase == "Failed":
        return f"{name} failed: {reason or 'no reason given'}"
    if phase == "Running":
        return f"{name} running: {done}/{total} steps done" + (f" ({reason})" if reason else "")
    return f"{name} submitted, waiting for Argo to start it" + (f" ({reason})" if reason else "")


def task_status(workflow: dict[str, Any], generation: int | None) -> dict[str, Any]:
    """Phase, progress, tokens, outputs, times, failure message and conditions of a run."""
    status = workflow.get("status") or {}
    phase = PHASES.get(status.get("phase") or "Pending", "Submitted")
    pods = [n for n in (status.get("nodes") or {}).values() if n.get("type") == "Pod"]
    done = sum(n.get("phase") in ("Succeeded", "Skipped") for n in pods)
    prompt = eval_ = 0
    outputs = None
    for node in pods:
        result = _result(node)
        template = node.get("templateName") or ""
        if template.startswith("stage-"):
            prompt += int(result.get("prompt_tokens", 0))
            eval_ += int(result.get("eval_tokens", 0))
        elif template == "publish" and result.get("outputs"):
            outputs = result["outputs"]
    failed = [n for n in pods if n.get("phase") in ("Failed", "Error")]
    reason = status.get("message") or ""
    if failed:
        first = sorted(failed, key=lambda n: n.get("finishedAt") or "")[0]
        reason = f"step {first.get('displayName') or first.get('name')}: {first.get('message') or 'failed'}"
    message = phase_message(workflow, phase, done, len(pods), outputs, reason)
    out: dict[str, Any] = {
        "phase": phase,
        "workflowName": workflow["metadata"]["name"],
        "observedGeneration": generation,
        "progress": {"done": done, "total": len(pods), "text": f"{done}/{len(pods)}"},
        "tokens": {"prompt": prompt, "eval": eval_, "total": prompt + eval_},
        "startedAt": status.get("startedAt"),
        "finishedAt": status.get("finishedAt"),
        "message": message,
    }
    if outputs:
        out["outputs"] = outputs
    conditions = [condition("Running", phase == "Running", phase, message, generation)]
    if phase in TERMINAL:
        conditions.append(condition("Succeeded", phase == "Succeeded", phase, message, generation))
        conditions.append(condition("Failed", phase == "Failed", phase, message, generation))
    out["conditions"] = conditions
    return {k: v for k, v in out.items() if v is not None}
