"""TaskOrchestration + OllamaAgents -> an Argo Workflow or CronWorkflow, built with Hera.

Graph: ingest -> shards -> each stage in its mode (a map stage fans out over the shards with
`withParam`; reduce and chat run once) -> publish. Every step is a Hera runner script whose
code runs from the aistack image (`python -m hera.workflows.runner -e
aistack.pipelines.runtime:<step>`); steps exchange URIs, so the Workflow's size does not
depend on the corpus.

Batch-mode agents get an Ollama sidecar in their stage's pod, holding the GPU
(`nvidia.com/gpu`), the agent's memory and CPU, the GPU toleration and node selector and the
model cache volume; the step waits until the sidecar lists the model. Agents on the embedded
engine (`aistack-*` models) get the aistack image's model server as a CPU sidecar instead.
Service-mode agents are called at their Service.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from hera.workflows import (
    DAG,
    CronWorkflow,
    Env,
    Parameter,
    Resources,
    RetryStrategy,
    UserContainer,
    Workflow,
    script,
)
from hera.workflows import (
    models as m,
)

from aistack.crds.models import OllamaAgent, OllamaAgentSpec, TaskOrchestration
from aistack.pipelines.runtime import STEP_METRICS

try:
    IMAGE = f"ghcr.io/aistack/aistack:{version('aistack')}"
except PackageNotFoundError:  # pragma: no cover
    IMAGE = "ghcr.io/aistack/aistack:latest"
OLLAMA_PORT = 11434
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = m.Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
RUNTIME = "aistack.pipelines.runtime"
# where stage steps leave their totals for Argo to read as output parameters (runtime.write_step_metrics)
METRICS_DIR = "/tmp/aistack-metrics"


def _duration_seconds(text: str) -> int:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return int(sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ms|s|m|h)", text)))


def step_template(name: str, function: str, **kwargs: Any) -> Any:
    """A Hera runner-script template running `aistack.pipelines.runtime.<function>` from the aistack
    image; extra keyword arguments go to `hera.workflows.script` (sidecars, resources, env, ...)."""
    source = getattr(__import__(RUNTIME, fromlist=[function]), function)
    return script(name=name, constructor="runner", image=IMAGE, **kwargs)(source)


def ollama_resources(spec: OllamaAgentSpec) -> dict[str, dict[str, str]]:
    """The Ollama container's requests and limits: the GPUs, memory (request = limit) and CPU."""
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if spec.resources.gpu:
        limits[GPU_RESOURCE] = str(spec.resources.gpu)
    if spec.resources.memory:
        limits["memory"] = requests["memory"] = spec.resources.memory
    if spec.resources.cpu:
        requests["cpu"] = spec.resources.cpu
    return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}


def _sidecar(agent_name: str, spec: OllamaAgentSpec) -> UserContainer:
    env = [m.EnvVar(name="OLLAMA_HOST", value=f"0.0.0.0:{OLLAMA_PORT}"),
           m.EnvVar(name="OLLAMA_KEEP_ALIVE", value=spec.keep_alive),
           m.EnvVar(name="OLLAMA_NUM_PARALLEL", value=str(spec.num_parallel)),
           m.EnvVar(name="OLLAMA_MODELS", value="/models")]  # fmt: skip
    env += [m.EnvVar(name=e.name, value=e.value) for e in spec.env]
    resources = ollama_resources(spec)
    embedded = spec.model.startswith("aistack-")
    probe = (
        ["python", "-c", f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{OLLAMA_PORT}/')"]
        if embedded
        else ["ollama", "list"]
    )
    return UserContainer(
        name=f"ollama-{agent_name}"[:63],
        image=IMAGE if embedded else spec.image,
        command=["aistack", "models", "serve", "--host", "0.0.0.0", "--port", str(OLLAMA_PORT)]
        if embedded
        else None,
        env=env,
        resources=m.ResourceRequirements(limits=resources.get("limits"), requests=resources.get("requests")),
        volume_mounts=[m.VolumeMount(name="model-cache", mount_path="/models")],
        ports=[m.ContainerPort(name="ollama", container_port=OLLAMA_PORT)],
        # an exec probe: Argo's schema types httpGet.port as a string, Hera's model as an int
        readiness_probe=m.Probe(exec=m.ExecAction(command=probe), period_seconds=5),
        security_context=m.SecurityContext(allow_privilege_escalation=False),
    )


def _stage_template(task: TaskOrchestration, stage_index: int, agents: dict[str, OllamaAgent]) -> Any:
    st = task.spec.pipeline[stage_index]
    names = st.agent_refs
    sidecars, gpu = [], False
    volumes: list[m.Volume] = []
    env = [
        Env(name="AISTACK_MODEL_WAIT_SECONDS", value="900"),
        Env(name="AISTACK_METRICS_DIR", value=METRICS_DIR),
    ]
    batch = [n for n in dict.fromkeys(names) if agents[n].spec.mode == "batch"]
    service = [n for n in dict.fromkeys(names) if agents[n].spec.mode == "service"]
    if service:  # a stage calls one host; service agents are reached at their Service
        env.append(
            Env(
                name="OLLAMA_HOST",
                value=f"http://{service[0]}.{task.metadata.namespace or 'default'}.svc:{OLLAMA_PORT}",
            )
        )
    elif batch:
        spec = agents[batch[0]].spec
        sidecars.append(_sidecar(batch[0], spec))
        gpu = spec.resources.gpu > 0
        claim = spec.model_cache.pvc_name or "aistack-model-cache"
        volumes.append(
            m.Volume(
                name="model-cache",
                persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(claim_name=claim),
            )
        )
        env.append(Env(name="OLLAMA_HOST", value=f"http://localhost:{OLLAMA_PORT}"))
    labels = {
        "ai.stack/task": task.metadata.name,
        "ai.stack/stage": st.stage_name,
        "ai.stack/agent": st.agent_ref,
    }
    node_selector = tolerations = None
    if gpu:
        spec = agents[batch[0]].spec
        node_selector = spec.node_selector or GPU_NODE_SELECTOR
        tolerations = (
            [m.Toleration(**t.model_dump(exclude_none=True)) for t in spec.tolerations]
            if spec.tolerations
            else [GPU_TOLERATION]
        )
    return step_template(
        f"stage-{st.stage_name}",
        "stage",
        sidecars=sidecars or None,
        env=env,
        volumes=volumes or None,
        node_selector=node_selector,
        tolerations=tolerations,
        labels=labels,
        resources=Resources(cpu_request="250m", memory_request="512Mi", memory_limit="4Gi"),
        retry_strategy=_retry(task),
        outputs=[
            Parameter(
                name=k.replace("_", "-"), value_from=m.ValueFrom(path=f"{METRICS_DIR}/{k}", default="0")
            )
            for k in STEP_METRICS
        ],
        metrics=_stage_metrics(task.metadata.name, st.stage_name, st.agent_ref),
    )


def _stage_metrics(task: str, stage: str, agent: str) -> m.Metrics:
    """Argo custom metrics of a stage step: its duration, a count by outcome, and the step's totals
    (rows, cached rows, errors, tokens, model seconds) read from its output parameters."""
    labels = [
        m.MetricLabel(key="task", value=task),
        m.MetricLabel(key="stage", value=stage),
        m.MetricLabel(key="agent", value=agent),
    ]

    def counter(name: str, help: str, output: str, extra: list[m.MetricLabel] | None = None) -> m.Prometheus:
        value = m.Counter(value=f"{{{{outputs.parameters.{output}}}}}")
        return m.Prometheus(name=name, help=help, labels=[*labels, *(extra or [])], counter=value)

    return m.Metrics(
        prometheus=[
            m.Prometheus(name="aistack_stage_duration_seconds", help="Duration of aistack stage steps",
                         labels=labels, gauge=m.Gauge(value="{{duration}}", realtime=False)),
            m.Prometheus(name="aistack_stage_steps_total", help="aistack stage steps by outcome",
                         labels=[*labels, m.MetricLabel(key="status", value="{{status}}")], counter=m.Counter(value="1")),
            counter("aistack_stage_rows_total", "Rows (model calls or cache hits) of aistack stage steps", "rows"),
            counter("aistack_stage_cached_rows_total", "Rows answered from the result cache", "cached"),
            counter("aistack_stage_errors_total", "Rows that failed (dead letters)", "errors"),
            counter("aistack_stage_tokens_total", "Tokens used by aistack stage steps", "prompt-tokens",
                    [m.MetricLabel(key="kind", value="prompt")]),
            counter("aistack_stage_tokens_total", "Tokens used by aistack stage steps", "eval-tokens",
                    [m.MetricLabel(key="kind", value="eval")]),
            counter("aistack_stage_call_seconds_total", "Model time of the calls aistack stage steps made", "call-seconds"),
        ]
    )  # fmt: skip


def _retry(task: TaskOrchestration) -> RetryStrategy:
    r = task.spec.retries
    return RetryStrategy(
        limit=str(r.limit),
        retry_policy="Always",
        backoff=m.Backoff(
            duration=r.backoff.duration, factor=str(r.backoff.factor), max_duration=r.backoff.max_duration
        ),
    )


def compile_task(
    task: TaskOrchestration,
    agents: dict[str, OllamaAgent],
    *,
    name: str | None = None,
    namespace: str | None = None,
) -> Workflow | CronWorkflow:
    """The Argo object for a task: a Workflow, or a CronWorkflow when it has a schedule."""
    missing = sorted(set(task.spec.agent_refs()) - set(agents))
    if missing:
        raise ValueError(
            f"TaskOrchestration {task.metadata.name!r} refers to undefined OllamaAgents: {', '.join(missing)}"
        )
    spec = task.spec
    task_json = spec.model_dump_json(by_alias=True, exclude_none=True)
    agents_json = json.dumps(
        {
            n: a.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
            for n, a in sorted(agents.items())
        },
        sort_keys=True,
    )
    labels = {"ai.stack/task": task.metadata.name, "app.kubernetes.io/part-of": "aistack"}
    annotations = {
        "workflows.argoproj.io/title": f"aistack: {task.metadata.name}",
        "workflows.argoproj.io/description": " -> ".join(f"{s.stage_name} ({s.mode})" for s in spec.pipeline),
    }
    common: dict[str, Any] = {
        "entrypoint": "pipeline",
        "namespace": namespace or task.metadata.namespace,
        "labels": labels,
        "annotations": annotations,
        "parallelism": spec.parallelism,
        "active_deadline_seconds": _duration_seconds(spec.timeout),
        "pod_gc": m.PodGC(strategy="OnPodSuccess"),
        "ttl_strategy": m.TTLStrategy(seconds_after_success=86400, seconds_after_failure=7 * 86400),
        "service_account_name": "aistack-workflow",
        "artifact_repository_ref": m.ArtifactRepositoryRef(
            config_map="artifact-repositories", key="aistack-s3"
        ),
        "arguments": [
            Parameter(name="task", value=task_json),
            Parameter(name="agents", value=agents_json),
            Parameter(name="run-uri", value=f"{spec.output_target.rstrip('/')}/runs/{{{{workflow.name}}}}"),
        ],
        "metrics": m.Metrics(
            prometheus=[
                m.Prometheus(
                    name="aistack_task_duration_seconds",
                    help="Duration of aistack task runs",
                    labels=[m.MetricLabel(key="task", value=task.metadata.name)],
                    gauge=m.Gauge(value="{{workflow.duration}}", realtime=False),
                ),
                # for "no successful scheduled run in N hours" (infra/monitoring)
                m.Prometheus(
                    name="aistack_task_last_success_timestamp_seconds",
                    help="Start time (Unix seconds) of the task's latest successful run",
                    labels=[
                        m.MetricLabel(key="task", value=task.metadata.name),
                        m.MetricLabel(key="scheduled", value=str(spec.schedule is not None).lower()),
                    ],
                    when="{{workflow.status}} == Succeeded",
                    gauge=m.Gauge(value="{{workflow.creationTimestamp.s}}", realtime=False),
                ),
            ]
        ),
    }
    if name:
        common["name"] = name
    else:
        common["generate_name"] = f"{task.metadata.name}-"
    if spec.schedule:
        s = spec.schedule
        wf: Workflow | CronWorkflow = CronWorkflow(
            schedules=[s.cron],
            timezone=s.timezone,
            concurrency_policy=str(s.concurrency_policy),
            starting_deadline_seconds=s.starting_deadline_seconds,
            suspend=s.suspend,
            **common,
        )
    else:
        wf = Workflow(**common)
    p = "{{workflow.parameters.%s}}"
    with wf:
        ingest = step_template("ingest", "ingest", retry_strategy=_retry(task))
        shards = step_template("shards", "shards")
        publish = step_template("publish", "publish")
        stage_templates = [_stage_template(task, i, agents) for i in range(len(spec.pipeline))]
        with DAG(name="pipeline"):
            t_ingest = ingest(name="ingest", arguments={"task": p % "task", "run_uri": p % "run-uri"})
            t_shards = shards(name="shards", arguments={"task": p % "task", "run_uri": p % "run-uri"})
            t_ingest >> t_shards
            tasks: dict[str, Any] = {}
            inputs = spec.stage_inputs()
            for st, template in zip(spec.pipeline, stage_templates, strict=True):
                args = {
                    "task": p % "task",
                    "agents": p % "agents",
                    "stage_name": st.stage_name,
                    "run_uri": p % "run-uri",
                }
                if st.mode == "map":
                    args |= {"shard": "{{item.shard}}", "shard_count": "{{item.count}}"}
                    t = template(name=st.stage_name, arguments=args, with_param=t_shards.result)
                else:
                    t = template(name=st.stage_name, arguments=args)
                deps = inputs[st.stage_name]
                for d in deps:
                    tasks[d] >> t
                if not deps:
                    t_shards >> t
                tasks[st.stage_name] = t
            t_publish = publish(
                name="publish",
                arguments={"task": p % "task", "run_uri": p % "run-uri", "run_id": "{{workflow.name}}"},
            )
            for n in spec.final_stages():
                tasks[n] >> t_publish
    return wf
