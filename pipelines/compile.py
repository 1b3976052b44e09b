"""TaskOrchestration + OllamaAgents -> an Argo Workflow or CronWorkflow, built with Hera.

Graph: ingest -> shards -> each stage in its mode (a map stage fans out over the shards with
`withParam`; reduce and chat run once) -> publish. Every step is a Hera runner script whose
code runs from the aistack image (`python -m hera.workflows.runner -e
aistack.pipelines.runtime:<step>`); steps exchange URIs, so the Workflow's size does not
depend on the corpus.

Batch-mode GPU agents get an Ollama sidecar in their stage's pod: one per stage, serving every
model the stage's agents use, holding the GPUs (`nvidia.com/gpu`), their memory and CPU, the GPU
toleration and node selector and the model cache volume; the step pulls each model (a model
Ollama cannot provide fails the step at once). CPU agents (`gpu: 0`) get the aistack image's
embedded model server as the sidecar, which stands in for their models with its embedded LLM
and says so in every result. Service-mode agents are called at their Service.
"""

from __future__ import annotations

import json
import math
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

from aistack.crds.models import OLLAMA_OPTION_ENV, OllamaAgent, OllamaAgentSpec, TaskOrchestration
from aistack.pipelines import run_spec
from aistack.pipelines.runtime import PERMANENT_EXIT, STEP_METRICS

try:
    IMAGE = f"ghcr.io/aistack/aistack:{version('aistack')}"
except PackageNotFoundError:  # pragma: no cover
    IMAGE = "ghcr.io/aistack/aistack:latest"
OLLAMA_PORT = 11434
EMBEDDED_PORT = 11435  # the embedded model server, when a stage also has an Ollama sidecar
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = m.Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
RUNTIME = "aistack.pipelines.runtime"
# an ingest pod's share of the input is bounded (a partition); its memory stays flat in its size
ETL_RESOURCES = Resources(cpu_request="1", memory_request="512Mi", memory_limit="2Gi")
# where stage steps leave their totals for Argo to read as output parameters (runtime.write_step_metrics)
METRICS_DIR = "/tmp/aistack-metrics"


def _duration_seconds(text: str) -> int:
    """Whole seconds, rounded up: Argo's activeDeadlineSeconds of 0 would end a run at once."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return max(1, math.ceil(sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ms|s|m|h)", text))))


def step_template(name: str, function: str, **kwargs: Any) -> Any:
    """A Hera runner-script template running `aistack.pipelines.runtime.<function>` from the aistack
    image; extra keyword arguments go to `hera.workflows.script` (sidecars, resources, env, ...)."""
    source = getattr(__import__(RUNTIME, fromlist=[function]), function)
    return script(name=name, constructor="runner", image=IMAGE, **kwargs)(source)


def _quantity_sum(values: list[str | None], memory: bool) -> str | None:
    """Kubernetes quantities added up (memory in Mi, CPU in millicores), or None if none is set."""
    from kubernetes.utils.quantity import parse_quantity

    present = [v for v in values if v]
    if len(present) <= 1:
        return present[0] if present else None
    given = [parse_quantity(v) for v in present]
    total = sum(given)
    if memory:
        return f"{int(total / 2**30)}Gi" if total % 2**30 == 0 else f"{math.ceil(total / 2**20)}Mi"
    return str(int(total)) if total == int(total) else f"{math.ceil(total * 1000)}m"


def ollama_resources(spec: OllamaAgentSpec) -> dict[str, dict[str, str]]:
    """The Ollama container's requests and limits for one agent: its GPUs, memory (request = limit)
    and CPU."""
    return server_resources([spec])


def server_resources(specs: list[OllamaAgentSpec]) -> dict[str, dict[str, str]]:
    """A model server's requests and limits for these agents: the most GPUs any of them needs
    (one server holds all their models), and their memory (request = limit) and CPU added up,
    since every model stays loaded while the stage runs."""
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    gpu = max((s.resources.gpu for s in specs), default=0)
    if gpu:
        limits[GPU_RESOURCE] = str(gpu)
    if memory := _quantity_sum([s.resources.memory for s in specs], memory=True):
        limits["memory"] = requests["memory"] = memory
    if cpu := _quantity_sum([s.resources.cpu for s in specs], memory=False):
        requests["cpu"] = cpu
    return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}


def _literal(value: str, where: str) -> str:
    """A value the compiler places in a template as it is: Argo would substitute a `{{` in it (and
    fail the node on one it cannot resolve, or evaluate `{{=...}}`), so none may reach it."""
    if "{{" in value:
        raise ValueError(f"{where}: {value[:80]!r} contains '{{{{', which Argo would substitute; remove it")
    return value


def _agent_fields(name: str, spec: OllamaAgentSpec) -> None:
    """Every field of an agent that lands in a template outside the encoded task."""
    where = f"OllamaAgent {name!r}"
    _literal(spec.model, f"{where}: spec.model")
    _literal(spec.image, f"{where}: spec.image")
    for i, e in enumerate(spec.env):
        _literal(e.value, f"{where}: spec.env[{i}].value ({e.name})")
    for k, v in (spec.node_selector or {}).items():
        _literal(f"{k}={v}", f"{where}: spec.nodeSelector")
    for i, t in enumerate(spec.tolerations or []):
        for field_name, value in t.model_dump(exclude_none=True).items():
            _literal(str(value), f"{where}: spec.tolerations[{i}].{field_name}")


def _container_env(agents: dict[str, OllamaAgentSpec]) -> list[m.EnvVar]:
    """The agents' env entries that are not request options (those go in every request), which
    must agree where two agents share one model server."""
    merged: dict[str, str] = {}
    for spec in agents.values():
        for e in spec.env:
            if e.name in OLLAMA_OPTION_ENV:
                continue
            if merged.get(e.name, e.value) != e.value:
                raise ValueError(
                    f"agents sharing a model server disagree on env {e.name}: {sorted(agents)}; "
                    "give them the same value or put them in different stages"
                )
            merged[e.name] = e.value
    return [m.EnvVar(name=k, value=v) for k, v in merged.items()]


def _server_container(
    name: str, agents: dict[str, OllamaAgentSpec], port: int, embedded: bool
) -> UserContainer:
    """One model server for the given agents of a stage, as a sidecar listening on loopback: Ollama
    (GPU agents; it pulls every model the stage needs into the model cache), or aistack's embedded
    model server (CPU agents: their models are served, by the embedded LLM where it stands in)."""
    specs = list(agents.values())
    models = sorted({s.model for s in specs})
    parallel = max(s.num_parallel for s in specs)
    env = [m.EnvVar(name="OLLAMA_KEEP_ALIVE", value=specs[0].keep_alive),
           m.EnvVar(name="OLLAMA_NUM_PARALLEL", value=str(parallel)),
           m.EnvVar(name="OLLAMA_MAX_LOADED_MODELS", value=str(len(models)))]  # fmt: skip
    if embedded:
        command = ["aistack", "models", "serve", "--host", "127.0.0.1", "--port", str(port)]
        command += [arg for model in models for arg in ("--model", model)]
        probe = ["python", "-c", f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/')"]
        image, mounts = IMAGE, None
    else:
        images = sorted({s.image for s in specs})
        if len(images) > 1:
            raise ValueError(f"GPU agents of one stage share one Ollama but name different images: {images}")
        env += [m.EnvVar(name="OLLAMA_HOST", value=f"127.0.0.1:{port}"),
                m.EnvVar(name="OLLAMA_MODELS", value="/models")]  # fmt: skip
        command, probe, image = None, ["ollama", "list"], images[0]
        mounts = [m.VolumeMount(name="model-cache", mount_path="/models")]
    resources = server_resources(specs)
    return UserContainer(
        name=name,
        image=image,
        command=command,
        env=env + _container_env(agents),
        resources=m.ResourceRequirements(limits=resources.get("limits"), requests=resources.get("requests")),
        volume_mounts=mounts,
        ports=[m.ContainerPort(name=name[:15], container_port=port)],
        # an exec probe: Argo's schema types httpGet.port as a string, Hera's model as an int
        readiness_probe=m.Probe(exec=m.ExecAction(command=probe), period_seconds=5),
        security_context=m.SecurityContext(allow_privilege_escalation=False),
    )


def _stage_template(task: TaskOrchestration, stage_index: int, agents: dict[str, OllamaAgent]) -> Any:
    """A stage step with every model server its agents need: one Ollama sidecar holding the GPUs for
    all its GPU agents' models, one embedded sidecar for its CPU agents, Services for service-mode
    agents. `AISTACK_AGENT_HOSTS` tells the step which server answers for which agent."""
    st = task.spec.pipeline[stage_index]
    names = list(dict.fromkeys(st.agent_refs))
    specs = {n: agents[n].spec for n in names}
    gpu_agents = {n: s for n, s in specs.items() if s.mode == "batch" and s.resources.gpu > 0}
    cpu_agents = {n: s for n, s in specs.items() if s.mode == "batch" and s.resources.gpu == 0}
    namespace = task.metadata.namespace or "default"
    hosts = {n: f"http://{n}.{namespace}.svc:{OLLAMA_PORT}" for n, s in specs.items() if s.mode == "service"}
    sidecars, volumes = [], []
    if gpu_agents:
        sidecars.append(_server_container("ollama", gpu_agents, OLLAMA_PORT, embedded=False))
        hosts |= {n: f"http://127.0.0.1:{OLLAMA_PORT}" for n in gpu_agents}
        claims = sorted({s.model_cache.pvc_name or "aistack-model-cache" for s in gpu_agents.values()})
        if len(claims) > 1:
            raise ValueError(f"GPU agents of stage {st.stage_name!r} name different model caches: {claims}")
        volumes.append(
            m.Volume(
                name="model-cache",
                persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(claim_name=claims[0]),
            )
        )
    if cpu_agents:
        port = EMBEDDED_PORT if gpu_agents else OLLAMA_PORT
        sidecars.append(_server_container("models", cpu_agents, port, embedded=True))
        hosts |= {n: f"http://127.0.0.1:{port}" for n in cpu_agents}
    env = [
        Env(name="AISTACK_MODEL_WAIT_SECONDS", value="900"),
        Env(name="AISTACK_METRICS_DIR", value=METRICS_DIR),
        Env(name="OLLAMA_HOST", value=hosts[st.agent_ref]),
        Env(name="AISTACK_AGENT_HOSTS", value=json.dumps(hosts, sort_keys=True)),
    ]
    labels = {
        "ai.stack/task": task.metadata.name,
        "ai.stack/stage": st.stage_name,
        "ai.stack/agent": st.agent_ref,
    }
    node_selector = tolerations = None
    if gpu_agents:
        first = next(iter(gpu_agents.values()))
        node_selector = first.node_selector or GPU_NODE_SELECTOR
        tolerations = (
            [m.Toleration(**t.model_dump(exclude_none=True)) for t in first.tolerations]
            if first.tolerations
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
    """Every step's retryStrategy (docs/argo-mapping.md). The task's maximum backoff is Argo's
    `backoff.cap` (the longest single delay); Argo's `backoff.maxDuration` is a total window from
    the first attempt's start that also becomes each retried pod's deadline, so it is set only from
    the task's own `retries.window`. A step that exits PERMANENT_EXIT is not retried."""
    r = task.spec.retries
    return RetryStrategy(
        limit=str(r.limit),
        retry_policy="Always",
        expression=f'lastRetry.exitCode != "{PERMANENT_EXIT}"',
        backoff=m.Backoff(
            duration=r.backoff.duration,
            factor=str(r.backoff.factor),
            cap=r.backoff.max_duration,
            max_duration=r.window,
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
    used = {n: agents[n].spec for n in spec.agent_refs()}
    for agent_name, agent_spec in used.items():
        _agent_fields(agent_name, agent_spec)
    parameters = run_spec.as_parameters(run_spec.RunSpec(spec, used), spec.output_target)
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
        # user text travels encoded, read by the first step only (run_spec.py)
        "arguments": [Parameter(name=k, value=v) for k, v in parameters.items()],
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
    if spec.schedule:  # one object per task, named after it: kubectl apply and Flux converge on it
        common["name"] = name or run_spec.stable_name(task.metadata.name, "CronWorkflow")
        s = spec.schedule
        wf: Workflow | CronWorkflow = CronWorkflow(
            schedules=[s.cron],
            timezone=s.timezone,
            concurrency_policy=str(s.concurrency_policy),
            starting_deadline_seconds=s.starting_deadline_seconds,
            cron_suspend=s.suspend or None,  # the schedule's switch, not workflowSpec.suspend
            **common,
        )
    else:
        if name:
            common["name"] = name
        else:  # a run: Argo makes the name unique
            common["generate_name"] = (
                f"{run_spec.stable_name(task.metadata.name, 'Workflow')[:57].rstrip('-')}-"
            )
        wf = Workflow(**common)
    p = "{{workflow.parameters.%s}}"
    run = {"target": p % "target", "workflow": "{{workflow.name}}"}
    with wf:
        retry = _retry(task)
        plan = step_template("plan", "plan", retry_strategy=retry)
        ingest = step_template("ingest", "ingest", retry_strategy=retry, resources=ETL_RESOURCES)
        etl = step_template("etl", "etl", retry_strategy=retry)
        publish = step_template("publish", "publish", retry_strategy=retry)
        stage_templates = [_stage_template(task, i, agents) for i in range(len(spec.pipeline))]
        with DAG(name="pipeline"):
            t_plan = plan(name="plan", arguments={"spec": p % "spec", **run})
            # one pod per partition of the input, then one dataset of them all and the map shards
            t_ingest = ingest(
                name="ingest", arguments={**run, "partition": "{{item}}"}, with_param=t_plan.result
            )
            t_shards = etl(name="etl", arguments=run)
            t_plan >> t_ingest >> t_shards
            tasks: dict[str, Any] = {}
            inputs = spec.stage_inputs()
            modes = {s.stage_name: s.mode for s in spec.pipeline}
            for st, template in zip(spec.pipeline, stage_templates, strict=True):
                args = {**run, "stage_name": st.stage_name}
                # a map fans out over the chunks' shards, or over a map's; after a reduce or a chat
                # there is one record set, and one pod for it
                sharded = not inputs[st.stage_name] or any(modes[d] == "map" for d in inputs[st.stage_name])
                if st.mode == "map" and sharded:
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
            t_publish = publish(name="publish", arguments=run)
            for n in spec.final_stages():
                tasks[n] >> t_publish
    return wf
