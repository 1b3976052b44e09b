"""pydantic models of OllamaAgent and TaskOrchestration (ai.stack/v1alpha1): the single source
of truth for the CRDs (crds/*.yaml), the offline validator and the docs.

Field constraints become OpenAPI keywords; cross-field rules are CEL
(`x-kubernetes-validations`) attached with `_cel(...)`, evaluated by the API server at apply
time and by `aistack validate` offline. Field names are camelCase on the wire.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "ai.stack"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# what the API server itself demands of a custom resource's metadata.name
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY = r"^([+]?[0-9]+(\.[0-9]+)?|[+]?\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
STORAGE_URI = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|file:///.*)$"


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules as (rule, message) pairs."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=True
    )


# --------------------------------------------------------------------------- shared pieces


QuantityStr = Annotated[str, Field(pattern=QUANTITY, description="Kubernetes quantity, e.g. 8Gi, 500m, 2")]
DNSName = Annotated[str, Field(pattern=DNS1123_LABEL, min_length=1, max_length=63)]


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Model):
    """A status condition following Kubernetes API conventions."""

    type: str = Field(
        description="e.g. AgentsReady, Submitted, Running, Succeeded, Failed, ModelReady, Ready"
    )
    status: ConditionStatus
    reason: str = Field(default="", description="CamelCase machine-readable reason")
    message: str = Field(default="", description="Human-readable detail")
    last_transition_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(default=None, ge=0)


class EnvVar(Model):
    name: str = Field(pattern=ENV_NAME, max_length=128)
    value: str = Field(max_length=4096)


class Toleration(Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


# --------------------------------------------------------------------------- OllamaAgent


class AgentRole(StrEnum):
    SUMMARIZER = "summarizer"
    QNA = "qna"
    CLASSIFIER = "classifier"
    EXTRACTOR = "extractor"
    JUDGE = "judge"
    ASSISTANT = "assistant"


class AgentMode(StrEnum):
    BATCH = "batch"
    SERVICE = "service"


class AgentResources(Model):
    gpu: int = Field(default=0, ge=0, le=16, description="nvidia.com/gpu count; 0 runs on CPU")
    memory: QuantityStr | None = Field(default=None, description="Memory request and limit, e.g. 8Gi")
    cpu: QuantityStr | None = Field(default=None, description="CPU request, e.g. 2 or 500m")


class ModelCache(Model):
    pvc_name: DNSName | None = Field(default=None, description="Existing PVC holding OLLAMA_MODELS")
    size: QuantityStr = Field(default="50Gi", description="Size of the PVC the operator creates")
    storage_class_name: str | None = None


class OllamaAgentSpec(Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("!has(self.replicas) || self.mode == 'service'", "replicas is only valid with mode: service"),
            ("!has(self.endpoint) || self.endpoint.startsWith('/')", "endpoint must start with '/'"),
            (
                "!has(self.env) || self.env.all(e, self.env.exists_one(f, f.name == e.name))",
                "env names must be unique",
            ),
        )
    )

    model: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/+-]*$",
        description="Ollama model name, e.g. llama3 or qwen2.5:7b (or hf.co/org/repo:tag)",
    )
    role: AgentRole = Field(description="The agent's role: its prompt template and output contract")
    mode: AgentMode = Field(
        default=AgentMode.BATCH,
        description="batch: an Ollama sidecar in each GPU step; service: a long-running Deployment + Service",
    )
    resources: AgentResources = Field(default_factory=AgentResources)
    endpoint: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^/[A-Za-z0-9/_-]*$",
        description="Gateway path, e.g. /summarize",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Ollama request options as env vars (TEMPERATURE, TOP_P, SEED, NUM_CTX, ...); others are "
        "passed to the Ollama container",
    )
    replicas: int | None = Field(default=None, ge=1, le=64, description="Deployment replicas (service mode)")
    model_cache: ModelCache = Field(default_factory=ModelCache)
    keep_alive: str = Field(
        default="5m", pattern=r"^(-1|0|([0-9]+(s|m|h))+)$", description="OLLAMA_KEEP_ALIVE"
    )
    num_parallel: int = Field(
        default=1, ge=1, le=64, description="OLLAMA_NUM_PARALLEL: slots per loaded model"
    )
    context_tokens: int | None = Field(
        default=None, ge=256, le=1048576, description="num_ctx; pinned so requests never force a reload"
    )
    node_selector: dict[str, str] | None = Field(default=None, description="Overrides the GPU node selector")
    tolerations: list[Toleration] | None = Field(default=None, description="Overrides the GPU toleration")
    image: str = Field(
        default="ollama/ollama:0.12.6",
        min_length=1,
        max_length=512,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$",
        description="Ollama image",
    )


class AgentPhase(StrEnum):
    PENDING = "Pending"
    PULLING = "Pulling"
    READY = "Ready"
    FAILED = "Failed"


class OllamaAgentStatus(Model):
    phase: AgentPhase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    ready_replicas: int | None = None
    model_digest: str | None = None
    service_url: str | None = None
    message: str | None = None


# --------------------------------------------------------------------------- TaskOrchestration


class StageMode(StrEnum):
    MAP = "map"
    REDUCE = "reduce"
    CHAT = "chat"


class InputFormat(StrEnum):
    AUTO = "auto"
    TEXT = "text"
    MARKDOWN = "markdown"
    HTML = "html"
    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"


class TaskInput(Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("has(self.uri) != has(self.dataset)", "input needs exactly one of uri or dataset"),
        )
    )

    uri: str | None = Field(
        default=None,
        max_length=1024,
        pattern=r"^(s3|file)://.+",
        description="s3://bucket/prefix or file:///path",
    )
    dataset: DNSName | None = Field(
        default=None, description="A dataset bundled with aistack, e.g. python-docs"
    )
    include: str | None = Field(
        default=None,
        max_length=256,
        pattern=r"^[^/].*",
        description="Glob of files to read under the input, e.g. howto/*.txt",
    )
    format: InputFormat = Field(default=InputFormat.AUTO, description="auto: by file extension")
    text_field: str = Field(default="text", min_length=1, description="Text field of jsonl, csv and parquet")


class Chunking(Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.overlapTokens < self.maxTokens", "overlapTokens must be less than maxTokens")
        )
    )

    max_tokens: int = Field(default=512, ge=8, le=131072, description="Maximum tokens per chunk")
    overlap_tokens: int = Field(
        default=64, ge=0, le=131071, description="Tokens shared by consecutive chunks"
    )
    encoding: Literal["cl100k_base"] = Field(default="cl100k_base", description="tiktoken encoding")


class Stage(Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.dependsOn) || !self.dependsOn.exists(d, d == (has(self.name) ? self.name : self.agentRef))",
                "a stage cannot depend on itself (its name defaults to its agentRef)",
            ),
            ("!has(self.rounds) || self.mode == 'chat'", "rounds is only valid with mode: chat"),
            ("!has(self.participants) || self.mode == 'chat'", "participants is only valid with mode: chat"),
            ("!has(self.judgeRef) || self.mode == 'chat'", "judgeRef is only valid with mode: chat"),
            ("self.mode != 'chat' || has(self.participants)", "mode: chat needs participants"),
        )
    )

    agent_ref: DNSName = Field(description="Name of an OllamaAgent in the same namespace")
    name: DNSName | None = Field(default=None, description="Stage name; defaults to agentRef")
    mode: StageMode = Field(default=StageMode.MAP, description="map: per chunk; reduce: combine; chat: turns")
    depends_on: list[DNSName] | None = Field(
        default=None, max_length=32, description="Stages this one reads; default: the previous stage"
    )
    rounds: int | None = Field(default=None, ge=1, le=20, description="Chat rounds (chat mode)")
    participants: list[DNSName] | None = Field(
        default=None, min_length=1, max_length=8, description="Other agents taking turns (chat mode)"
    )
    judge_ref: DNSName | None = Field(default=None, description="Agent that closes the chat (chat mode)")
    prompt: str | None = Field(
        default=None, max_length=16384, description="Overrides the role's prompt template"
    )
    labels: list[str] | None = Field(
        default=None, min_length=2, max_length=64, description="Classifier labels"
    )
    output_schema: dict[str, Any] | None = Field(
        default=None,
        description="JSON schema of the extractor's output",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @property
    def stage_name(self) -> str:
        return self.name or self.agent_ref

    @property
    def agent_refs(self) -> list[str]:
        """Every OllamaAgent the stage calls: its agent, chat participants, the judge."""
        return [self.agent_ref, *(self.participants or []), *([self.judge_ref] if self.judge_ref else [])]


class ConcurrencyPolicy(StrEnum):
    ALLOW = "Allow"
    FORBID = "Forbid"
    REPLACE = "Replace"


class Schedule(Model):
    cron: str = Field(
        pattern=r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\s*(\S+\s+){4}\S+\s*)$",
        description="Five-field cron expression or @daily-style macro",
    )
    timezone: str = Field(default="UTC", min_length=1, description="IANA time zone, e.g. Europe/Paris")
    concurrency_policy: ConcurrencyPolicy = Field(
        default=ConcurrencyPolicy.FORBID, description="When a run is due while the last one still runs"
    )
    suspend: bool = Field(
        default=False,
        description="Pause the schedule: no new runs start (CronWorkflow spec.suspend); a running one goes on",
    )
    starting_deadline_seconds: int | None = Field(default=None, ge=0)


class Backoff(Model):
    duration: str = Field(default="10s", pattern=DURATION, description="Delay before the first retry")
    factor: int = Field(
        default=2, ge=1, le=10, description="Each further delay is the previous one times this"
    )
    max_duration: str = Field(
        default="5m",
        pattern=DURATION,
        description="Longest single delay between two attempts (Argo's backoff.cap); not a limit on the "
        "step's total time",
    )


class Retries(Model):
    limit: int = Field(default=3, ge=0, le=20, description="Retries after the first attempt of a step")
    backoff: Backoff = Field(default_factory=Backoff)
    window: str | None = Field(
        default=None,
        pattern=DURATION,
        description="Total time a step may take over all its attempts, from the first one's start (Argo's "
        "backoff.maxDuration, which also becomes each retried pod's deadline). Unset: no window, the task's "
        "timeout bounds the run",
    )


class CachePolicy(StrEnum):
    USE = "Use"
    REFRESH = "Refresh"
    OFF = "Off"


class Cache(Model):
    policy: CachePolicy = Field(default=CachePolicy.USE, description="Use: reuse results; Refresh: recompute")
    uri: str | None = Field(
        default=None, pattern=STORAGE_URI, description="Shared across runs; default: beside outputs"
    )


class TaskOrchestrationSpec(Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "(has(self.inputText) ? 1 : 0) + (has(self.input) ? 1 : 0) == 1",
                "exactly one of inputText or input is required",
            ),
            (
                "self.pipeline.all(s, self.pipeline.exists_one(t, "
                "(has(t.name) ? t.name : t.agentRef) == (has(s.name) ? s.name : s.agentRef)))",
                "stage names must be unique (a stage's name defaults to its agentRef)",
            ),
            (
                "self.pipeline.all(s, !has(s.dependsOn) || s.dependsOn.all(d, "
                "self.pipeline.exists(t, (has(t.name) ? t.name : t.agentRef) == d)))",
                "dependsOn must name stages of this pipeline",
            ),
        )
    )

    input_text: str | None = Field(
        default=None, min_length=1, max_length=262144, description="Inline input text"
    )
    input: TaskInput | None = Field(default=None, description="Input corpus by URI or dataset name")
    question: str | None = Field(default=None, max_length=4096, description="The question for qna stages")
    chunking: Chunking = Field(default_factory=Chunking)
    pipeline: list[Stage] = Field(
        min_length=1, max_length=32, description="Stages; by default a chain in list order"
    )
    output_target: str = Field(
        pattern=STORAGE_URI, max_length=1024, description="s3://bucket/prefix or file:///path"
    )
    schedule: Schedule | None = Field(default=None, description="Run as a CronWorkflow")
    parallelism: int = Field(default=4, ge=1, le=1000, description="Pods running at once")
    max_shards: int = Field(default=16, ge=1, le=1000, description="Upper bound of the map fan-out")
    retries: Retries = Field(default_factory=Retries)
    timeout: str = Field(
        default="6h",
        pattern=DURATION,
        description="Deadline of one run, from its start (Argo's activeDeadlineSeconds, whole seconds)",
    )
    error_budget_percent: int = Field(
        default=5, ge=0, le=100, description="Failed records a stage tolerates before it fails"
    )
    cache: Cache = Field(default_factory=Cache)

    def stage_inputs(self) -> dict[str, list[str]]:
        """The stages each stage reads: its dependsOn, by default the previous stage."""
        names = [s.stage_name for s in self.pipeline]
        return {
            s.stage_name: list(s.depends_on) if s.depends_on is not None else names[i - 1 : i]
            for i, s in enumerate(self.pipeline)
        }

    def final_stages(self) -> list[str]:
        """Stages no other stage reads: their results are the task's outputs."""
        consumed = {d for inputs in self.stage_inputs().values() for d in inputs}
        return [s.stage_name for s in self.pipeline if s.stage_name not in consumed]

    def agent_refs(self) -> list[str]:
        """Every OllamaAgent the pipeline calls, sorted."""
        return sorted({r for s in self.pipeline for r in s.agent_refs})


class TaskPhase(StrEnum):
    PENDING = "Pending"
    SUBMITTED = "Submitted"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SCHEDULED = "Scheduled"


class Progress(Model):
    done: int = 0
    total: int = 0
    text: str = Field(default="0/0", description="done/total, for kubectl get")


class TokenTotals(Model):
    prompt: int = 0
    eval: int = 0
    total: int = 0


class TaskOrchestrationStatus(Model):
    phase: TaskPhase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    workflow_name: str | None = None
    progress: Progress | None = None
    tokens: TokenTotals | None = None
    outputs: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    message: str | None = None


# --------------------------------------------------------------------------- resources

# The API server accepts any DNS-1123 subdomain (253 characters, dots) as a name; the rules below,
# at the root of each CRD's schema (where CEL sees metadata.name), reject names whose derived
# objects could never be created, so `kubectl apply` fails instead of the operator.
# size() first: it costs nothing, and CEL's cost estimate of an unbounded name stays small.
NAME_RULES: dict[str, list[dict[str, str]]] = {
    "OllamaAgent": _cel(
        (
            "self.metadata.name.size() <= 56",
            "metadata.name must be at most 56 characters: the agent's Ollama sidecar is the container "
            "ollama-<name>, a DNS-1123 label",
        ),
        (
            "!self.metadata.name.contains('.')",
            "metadata.name must not contain '.': it names Services, containers and labels (DNS-1123 labels)",
        ),
        (
            "self.spec.mode != 'service' || self.metadata.name.matches('^[a-z]')",
            "metadata.name must start with a letter in mode: service (the Service <name> is a DNS-1035 label)",
        ),
    )["x-kubernetes-validations"],
    "TaskOrchestration": _cel(
        (
            "self.metadata.name.size() <= 63",
            "metadata.name must be at most 63 characters: it is the value of the ai.stack/task label "
            "of every step",
        ),
        (
            "!self.metadata.name.contains('.')",
            "metadata.name must not contain '.': workflow and label names derived from it are DNS-1123 labels",
        ),
    )["x-kubernetes-validations"],
}


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=DNS1123_LABEL, max_length=63)
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    generation: int | None = None
    uid: str | None = None


class OllamaAgent(Model):
    api_version: Literal["ai.stack/v1alpha1"] = API_VERSION
    kind: Literal["OllamaAgent"] = "OllamaAgent"
    metadata: ObjectMeta
    spec: OllamaAgentSpec
    status: OllamaAgentStatus | None = None


class TaskOrchestration(Model):
    api_version: Literal["ai.stack/v1alpha1"] = API_VERSION
    kind: Literal["TaskOrchestration"] = "TaskOrchestration"
    metadata: ObjectMeta
    spec: TaskOrchestrationSpec
    status: TaskOrchestrationStatus | None = None


# env entries of an OllamaAgent that are Ollama request options (name -> (option, type));
# anything else is passed to the Ollama container as an environment variable.
OLLAMA_OPTION_ENV: dict[str, tuple[str, type]] = {
    "TEMPERATURE": ("temperature", float),
    "TOP_P": ("top_p", float),
    "TOP_K": ("top_k", int),
    "MIN_P": ("min_p", float),
    "SEED": ("seed", int),
    "NUM_CTX": ("num_ctx", int),
    "NUM_PREDICT": ("num_predict", int),
    "REPEAT_PENALTY": ("repeat_penalty", float),
    "REPEAT_LAST_N": ("repeat_last_n", int),
    "PRESENCE_PENALTY": ("presence_penalty", float),
    "FREQUENCY_PENALTY": ("frequency_penalty", float),
    "STOP": ("stop", str),
}
