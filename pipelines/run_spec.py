"""How a task reaches its steps on Argo: as data Argo never interprets, and once.

Argo substitutes `{{...}}` in parameter values and template fields, strictly, during fan-out (an
unresolvable tag fails the node, `{{=...}}` is an expression): a question or prompt containing
`{{ x }}` would fail the map fan-out, and `{{workflow.name}}` would be silently rewritten. And
every node records its input parameters in the Workflow's status, so a task passed to every
step would be copied once per pod into an object capped at about 1 MB.

So the task and its agents travel as one workflow parameter, compressed and base64-encoded
(an alphabet with no braces), read by the first step only, which writes them to the run's
storage (`<run>/spec.json`); every other step gets the run's location and reads them from
there. The run's location is the task's outputTarget, base64-encoded too, and the workflow's
own name (a DNS name Argo generates).
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass
from typing import Any

from aistack.crds.models import OllamaAgentSpec, TaskOrchestrationSpec
from aistack.etl.storage import open_storage

SPEC_FILE = "spec.json"
# the compressed, encoded spec must stay far below Argo's object limit; larger inputs belong in
# input.uri (a corpus), not inline in the task
MAX_SPEC_PARAMETER = 256 * 1024
# Argo's limits on names: a Workflow's is a label value (63), a CronWorkflow's leaves room for the
# suffix Argo appends to each run's name (52)
NAME_LIMITS = {"Workflow": 63, "WorkflowTemplate": 63, "CronWorkflow": 52}


def encode_text(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def decode_text(value: str) -> str:
    return base64.urlsafe_b64decode(value.encode()).decode()


@dataclass(frozen=True)
class RunSpec:
    """A task's spec and its agents' specs: what every step of a run needs to know."""

    task: TaskOrchestrationSpec
    agents: dict[str, OllamaAgentSpec]

    def to_json(self) -> str:
        return json.dumps(
            {
                "task": self.task.model_dump(mode="json", by_alias=True, exclude_none=True),
                "agents": {
                    n: a.model_dump(mode="json", by_alias=True, exclude_none=True)
                    for n, a in sorted(self.agents.items())
                },
            },
            sort_keys=True,
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        data = json.loads(text)
        return cls(
            TaskOrchestrationSpec.model_validate(data["task"]),
            {n: OllamaAgentSpec.model_validate(a) for n, a in data["agents"].items()},
        )

    def encode(self) -> str:
        """The workflow parameter: compressed and base64-encoded, so Argo sees no `{{`."""
        encoded = base64.b64encode(zlib.compress(self.to_json().encode(), 9)).decode()
        if len(encoded) > MAX_SPEC_PARAMETER:
            raise ValueError(
                f"the task is {len(encoded):,} bytes once encoded, over the {MAX_SPEC_PARAMETER:,} a workflow "
                "parameter may carry: put large input in input.uri instead of inputText"
            )
        return encoded

    @classmethod
    def decode(cls, value: str) -> RunSpec:
        return cls.from_json(zlib.decompress(base64.b64decode(value.encode())).decode())


def run_uri(target: str, workflow: str) -> str:
    """Where a run keeps its intermediate datasets: `<outputTarget>/runs/<workflow name>`."""
    return f"{decode_text(target).rstrip('/')}/runs/{workflow}"


def save(run: str, spec: RunSpec) -> None:
    open_storage(run).write_bytes(SPEC_FILE, spec.to_json().encode())


def load(run: str) -> RunSpec:
    return RunSpec.from_json(open_storage(run).read_bytes(SPEC_FILE).decode())


def stable_name(base: str, kind: str, suffix: str = "") -> str:
    """`<base><suffix>` within Argo's limit for `kind`; too long, the base is cut and a hash of it
    keeps the name unique and deterministic (the same task always gets the same name)."""
    limit = NAME_LIMITS[kind]
    if len(base) + len(suffix) <= limit:
        return base + suffix
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"{base[: limit - len(suffix) - 9].rstrip('-')}-{digest}{suffix}"


def as_parameters(spec: RunSpec, output_target: str) -> dict[str, Any]:
    return {"spec": spec.encode(), "target": encode_text(output_target)}
