"""kopf handlers: TaskOrchestration -> Argo Workflow/CronWorkflow, OllamaAgent -> model service.

TaskOrchestration
- On create, spec change (generation) and operator restart: validate, resolve the agentRefs,
  compile with the same code as `aistack compile`, and create the Workflow named
  `<task>-g<generation>` with an ownerReference. The name is deterministic, so a second
  reconcile, or one after a crash between create and status patch, finds the existing
  workflow (409) and adopts it: never a second workflow.
- Missing or not-ready agents: condition AgentsReady=False naming them; the handler retries by
  itself until they are there (no re-apply needed).
- A timer mirrors the Workflow (or a CronWorkflow's latest run) into status: phase, conditions,
  progress, tokens, outputs, times and the failing step's message.
- A spec change while a run is going: a new generation gets a new workflow; the old one is left
  to finish (its results stay where it wrote them). Deletion: owned workflows are garbage
  collected through their ownerReferences; no finalizer (outputs on S3 are kept on purpose).
- What happened is posted as Kubernetes Events (`kubectl describe tasko`): AgentsNotReady,
  WorkflowCreated/WorkflowAdopted, Running, Succeeded, Failed with the reason, Invalid.
- Handlers return None: kopf would store a return value in status, where the structural
  schema prunes it (and kopf then warns on every reconcile).

OllamaAgent
- batch mode: nothing runs between batches; a valid spec is Ready.
- service mode: PVC, Deployment (model pulled by an init container, ready once the model is
  present) and Service, owned by the agent; spec changes roll out; status follows readiness.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import kopf

from aistack.crds.models import GROUP, VERSION, OllamaAgent, TaskOrchestration
from aistack.crds.validation import InvalidResourceError, parse
from aistack.operator import kube, metrics, workloads
from aistack.operator.progress import TERMINAL, condition, merge_conditions, task_status
from aistack.pipelines.compile import compile_task
from aistack.pipelines.run_spec import stable_name

AGENT_RETRY_SECONDS = float(os.environ.get("AISTACK_AGENT_RETRY_SECONDS", "15"))
FOLLOW_SECONDS = float(os.environ.get("AISTACK_FOLLOW_SECONDS", "10"))
log = logging.getLogger("aistack.operator")


def report(body: kopf.Body, reason: str, message: str, warning: bool = False) -> None:
    """A Kubernetes Event on the object (kubectl describe) and the same line in the operator's log."""
    meta = body.get("metadata") or {}
    kopf.event(body, type="Warning" if warning else "Normal", reason=reason, message=message)
    log.log(
        logging.WARNING if warning else logging.INFO,
        f"[{meta.get('namespace')}/{meta.get('name')}] {reason}: {message}",
    )


def _object(body: kopf.Body | dict[str, Any]) -> dict[str, Any]:
    """The resource as the validator sees it: plain dicts, no status, user-facing metadata only."""
    meta = dict(body.get("metadata") or {})
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            k: copy.deepcopy(meta[k]) for k in ("name", "namespace", "labels", "annotations") if k in meta
        },
        "spec": copy.deepcopy(dict(body.get("spec") or {})),
    }


def workflow_name(task: str, generation: int | None, kind: str = "Workflow") -> str:
    """`<task>-g<generation>`; too long for Argo, the task part is cut and a hash of the whole
    task name keeps it unique and deterministic (a restarted operator derives the same name)."""
    return stable_name(task, kind, f"-g{generation or 1}")


def _agent_ready(agent: dict[str, Any]) -> bool:
    conds = (agent.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def _parse_or_fail(
    body: kopf.Body, status: kopf.Status, patch: kopf.Patch, generation: Any, condition_type: str
) -> Any:
    """The typed resource; an invalid one gets a Failed status naming every problem, and is not retried."""
    try:
        return parse(_object(body))
    except InvalidResourceError as exc:
        _set_status(patch, dict(status), {"phase": "Failed", "message": str(exc), "observedGeneration": generation,
                    "conditions": [condition(condition_type, False, "Invalid", str(exc), generation)]})  # fmt: skip
        report(body, "Invalid", str(exc), warning=True)
        raise kopf.PermanentError(str(exc)) from exc


def _set_status(patch: kopf.Patch, old: dict[str, Any], new: dict[str, Any]) -> None:
    conds = new.pop("conditions", [])
    for key, value in new.items():
        patch.status[key] = value
    patch.status["conditions"] = merge_conditions(old.get("conditions") or [], conds)


@kopf.on.create(GROUP, VERSION, "taskorchestrations")
@kopf.on.update(GROUP, VERSION, "taskorchestrations", field="spec")
@kopf.on.resume(GROUP, VERSION, "taskorchestrations")
def reconcile_task(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, namespace: str, name: str,
                   patch: kopf.Patch, **_: Any) -> None:  # fmt: skip
    generation = meta.get("generation")
    with metrics.reconcile("TaskOrchestration"):
        if status.get("observedGeneration") == generation and status.get("workflowName"):
            return  # resumed: already submitted
        task = _parse_or_fail(body, status, patch, generation, "Valid")
        assert isinstance(task, TaskOrchestration)
        refs = task.spec.agent_refs()
        found = {r: kube.get_agent(namespace, r) for r in refs}
        missing = [r for r, a in found.items() if a is None]
        unready = [r for r, a in found.items() if a is not None and not _agent_ready(a)]
        if missing or unready:
            parts = ([f"missing: {', '.join(missing)}"] if missing else []) + (
                [f"not ready: {', '.join(unready)}"] if unready else []
            )
            message = f"OllamaAgents {'; '.join(parts)}"
            if status.get("message") != message:  # one Event per change, not one per retry
                report(
                    body,
                    "AgentsNotReady",
                    f"{message}; retrying every {AGENT_RETRY_SECONDS:g} s",
                    warning=True,
                )
            _set_status(patch, dict(status), {"phase": "Pending", "message": message, "observedGeneration": generation,
                        "conditions": [condition("AgentsReady", False, "AgentsMissing" if missing else "AgentsNotReady", message, generation)]})  # fmt: skip
            raise kopf.TemporaryError(message, delay=AGENT_RETRY_SECONDS)
        agents = {r: parse(_object(a)) for r, a in found.items()}  # type: ignore[arg-type]
        kind = "CronWorkflow" if task.spec.schedule else "Workflow"
        wf = compile_task(task, agents, name=workflow_name(name, generation, kind), namespace=namespace)  # type: ignore[arg-type]
        manifest = wf.to_dict()
        kopf.adopt(manifest, owner=body)
        created, fresh = kube.create_or_get_workflow(namespace, manifest)
        if fresh:
            metrics.WORKFLOWS_CREATED.labels(kind).inc()
        wf_name = created["metadata"]["name"]
        previous = status.get("workflowName")
        replaced = kind == "CronWorkflow" and previous and previous != wf_name
        # one schedule per task: the previous generation's stops (runs it started go on)
        if replaced and kube.delete_cron_workflow(namespace, previous):
            report(body, "ScheduleReplaced", f"CronWorkflow {previous} deleted: replaced by {wf_name}")
        phase = "Scheduled" if kind == "CronWorkflow" else "Submitted"
        message = f"{kind} {wf_name} {'created' if fresh else 'adopted'}"
        report(body, "WorkflowCreated" if fresh else "WorkflowAdopted", message)
        _set_status(patch, dict(status), {
            "phase": phase, "workflowName": wf_name, "observedGeneration": generation, "message": message,
            "conditions": [condition("AgentsReady", True, "AgentsReady", "all agents are ready", generation),
                           condition("Submitted", True, "WorkflowCreated" if fresh else "WorkflowAdopted", message, generation)],
        })  # fmt: skip
        metrics.task_phase(namespace, name, phase)


@kopf.timer(GROUP, VERSION, "taskorchestrations", interval=FOLLOW_SECONDS, initial_delay=1.0)
def follow_task(body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status, namespace: str,
                name: str, patch: kopf.Patch, **_: Any) -> None:  # fmt: skip
    wf_name = status.get("workflowName")
    if not wf_name or (
        status.get("phase") in TERMINAL and status.get("observedGeneration") == meta.get("generation")
    ):
        return
    with metrics.reconcile("TaskOrchestration/status"):
        scheduled = bool(spec.get("schedule"))
        workflow = (
            kube.latest_cron_run(namespace, wf_name) if scheduled else kube.get_workflow(namespace, wf_name)
        )
        if workflow is None:
            return
        new = task_status(workflow, meta.get("generation"))
        if scheduled:
            new["workflowName"] = wf_name  # the CronWorkflow; its latest run is in the message
            new["message"] = (
                f"latest run {workflow['metadata']['name']}: {new.get('message') or new['phase']}"
            )
        current = {k: status.get(k) for k in new if k != "conditions"}
        if current == {k: v for k, v in new.items() if k != "conditions"}:
            return
        _set_status(patch, dict(status), new)
        if new["phase"] != status.get("phase") and new["phase"] in ("Running", "Succeeded", "Failed"):
            report(body, new["phase"], new["message"], warning=new["phase"] == "Failed")
        metrics.task_phase(namespace, name, new["phase"])
        for kind in ("prompt", "eval"):
            metrics.TOKENS.labels(namespace, name, kind).set(new["tokens"][kind])


@kopf.on.create(GROUP, VERSION, "ollamaagents")
@kopf.on.update(GROUP, VERSION, "ollamaagents", field="spec")
@kopf.on.resume(GROUP, VERSION, "ollamaagents")
def reconcile_agent(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, namespace: str, name: str,
                    patch: kopf.Patch, **_: Any) -> None:  # fmt: skip
    generation = meta.get("generation")
    with metrics.reconcile("OllamaAgent"):
        agent = _parse_or_fail(body, status, patch, generation, "Ready")
        assert isinstance(agent, OllamaAgent)
        spec = agent.spec
        if spec.mode == "batch":
            message = "batch mode: an Ollama sidecar runs in each stage pod"
            _set_status(patch, dict(status), {"phase": "Ready", "observedGeneration": generation, "message": message,
                        "conditions": [condition("Ready", True, "BatchMode", message, generation)]})  # fmt: skip
            report(body, "Ready", message)
            return
        for manifest in filter(
            None,
            [
                workloads.model_cache_pvc(name, spec),
                workloads.deployment(name, spec),
                workloads.service(name),
            ],
        ):
            kopf.adopt(manifest, owner=body)
            kube.apply_workload(namespace, manifest)
        message = f"Deployment {name}-ollama pulling {spec.model}"
        _set_status(patch, dict(status), {
            "phase": "Pulling", "observedGeneration": generation, "message": message,
            "serviceUrl": f"http://{name}.{namespace}.svc:11434",
            "conditions": [condition("ModelReady", False, "Pulling", message, generation),
                           condition("Ready", False, "Pulling", message, generation)],
        })  # fmt: skip
        report(body, "Pulling", message)


@kopf.timer(GROUP, VERSION, "ollamaagents", interval=FOLLOW_SECONDS, initial_delay=1.0)
def follow_agent(body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status, namespace: str,
                 name: str, patch: kopf.Patch, **_: Any) -> None:  # fmt: skip
    if spec.get("mode", "batch") != "service":
        return
    deployment = kube.get_deployment(namespace, f"{name}-ollama")
    if deployment is None:
        return
    ready = int((deployment.get("status") or {}).get("ready_replicas") or 0)
    wanted = int((deployment.get("spec") or {}).get("replicas") or 1)
    ok = ready >= wanted
    if status.get("readyReplicas") == ready and status.get("phase") == ("Ready" if ok else "Pulling"):
        return
    generation = meta.get("generation")
    message = f"{ready}/{wanted} replicas have {spec.get('model')} loaded"
    _set_status(patch, dict(status), {
        "phase": "Ready" if ok else "Pulling", "readyReplicas": ready, "message": message,
        "conditions": [condition("ModelReady", ok, "ModelPresent" if ok else "Pulling", message, generation),
                       condition("Ready", ok, "ReplicasReady" if ok else "ReplicasNotReady", message, generation)],
    })  # fmt: skip
    if ok != (status.get("phase") == "Ready"):
        report(body, "Ready" if ok else "NotReady", message, warning=not ok)
