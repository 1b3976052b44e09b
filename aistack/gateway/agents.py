"""Synchronous agent endpoints: which agents answer where, and one call with the role's contract.

An agent answers when it is Ready and declares an `endpoint`. Its model server is the agent's
Service (service mode), the gateway's configured Ollama (batch-mode agents have no server of
their own between batches), or, in local mode, `OLLAMA_HOST` / the embedded model server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from aistack.crds.models import AgentRole, OllamaAgent
from aistack.crds.validation import InvalidResourceError, parse
from aistack.etl.encodings import load_encoding
from aistack.gateway.tasks import GROUP, VERSION, GatewayError
from aistack.pipelines.runtime import agent_config
from aistack.steps.model_client import ModelCallError, ModelClient
from aistack.steps.roles import StageSettings, role
from aistack.steps.stages import call_agent

OLLAMA_PORT = 11434
CONTRACT_RETRIES = 2


class AgentRequest(BaseModel):
    """What to send an agent: the text, and what the role needs beyond it."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    text: str = Field(min_length=1, description="The input: a document, a chunk, a question's context.")
    question: str | None = Field(None, max_length=4000, description="For qna agents: the question.")
    labels: list[str] | None = Field(None, min_length=2, max_length=64, description="For classifier agents.")
    output_schema: dict[str, Any] | None = Field(
        None, alias="outputSchema", description="For extractor agents."
    )
    prompt: str | None = Field(None, max_length=8000, description="Replaces the role's instruction.")
    stream: bool = Field(False, description="Stream the answer as NDJSON (free-text roles only).")


class AgentResponse(BaseModel):
    agent: str
    model: str
    role: str
    response: Any = Field(description="Text, or the parsed JSON for roles with an output schema.")
    promptTokens: int
    evalTokens: int
    durationMs: float
    attempts: int
    cached: bool


@dataclass(frozen=True)
class ServedAgent:
    name: str
    namespace: str
    agent: OllamaAgent
    host: str | None  # None: no model server to call (a batch-mode agent in cluster mode)

    @property
    def endpoint(self) -> str:
        return self.agent.spec.endpoint or ""

    def describe(self) -> dict[str, Any]:
        spec = self.agent.spec
        return {
            "name": self.name, "namespace": self.namespace, "model": spec.model, "role": str(spec.role),
            "mode": str(spec.mode), "endpoint": self.endpoint, "url": f"/v1/agents/{self.name}{self.endpoint}",
            "available": self.host is not None,
        }  # fmt: skip


class AgentDirectory(Protocol):
    def agents(self, namespace: str) -> dict[str, ServedAgent]: ...


class LocalAgents:
    def __init__(self, agents: dict[str, OllamaAgent], host: str) -> None:
        self._agents, self.host = agents, host

    def agents(self, namespace: str) -> dict[str, ServedAgent]:
        return {
            n: ServedAgent(n, namespace, a, self.host) for n, a in self._agents.items() if a.spec.endpoint
        }


class ClusterAgents:
    """Ready OllamaAgents with an endpoint, read from the API server (briefly cached)."""

    def __init__(self, api_client: Any, batch_host: str | None, ttl: float = 5.0) -> None:
        from kubernetes import client

        self._api = client.CustomObjectsApi(api_client)
        self.batch_host, self.ttl = batch_host, ttl
        self._cache: dict[str, tuple[float, dict[str, ServedAgent]]] = {}

    def agents(self, namespace: str) -> dict[str, ServedAgent]:
        from kubernetes.client.exceptions import ApiException

        cached = self._cache.get(namespace)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            items = self._api.list_namespaced_custom_object(GROUP, VERSION, namespace, "ollamaagents")[
                "items"
            ]
        except ApiException as e:
            raise GatewayError(
                502, "BadGateway", f"listing OllamaAgents in {namespace!r}: API server answered {e.status}"
            ) from e
        served = {}
        for item in items:
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (item.get("status") or {}).get("conditions", [])
            )
            try:
                agent = parse(item)
            except InvalidResourceError:
                continue  # the operator reports it in the agent's status
            if not ready or not isinstance(agent, OllamaAgent) or not agent.spec.endpoint:
                continue
            name = agent.metadata.name
            host = (
                f"http://{name}.{namespace}.svc:{OLLAMA_PORT}"
                if agent.spec.mode == "service"
                else self.batch_host
            )
            served[name] = ServedAgent(name, namespace, agent, host)
        self._cache[namespace] = (time.monotonic() + self.ttl, served)
        return served


def resolve_bare(agents: dict[str, ServedAgent], endpoint: str) -> ServedAgent:
    """The one agent whose endpoint is `endpoint` (the seed's `POST /summarize` form)."""
    matches = [a for a in agents.values() if a.endpoint == endpoint]
    if not matches:
        raise GatewayError(404, "NotFound", f"no agent serves {endpoint}; see GET /v1/agents")
    if len(matches) > 1:
        names = ", ".join(sorted(a.name for a in matches))
        raise GatewayError(
            409,
            "Conflict",
            f"{endpoint} is served by several agents ({names}): call /v1/agents/<agent>{endpoint}",
        )
    return matches[0]


class AgentCaller:
    """Calls agents through aistack's ModelClient (retries, bounded concurrency), one client per
    model server, all on the gateway's event loop."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._clients: dict[str, ModelClient] = {}

    def _client(self, served: ServedAgent) -> ModelClient:
        if served.host is None:
            raise GatewayError(
                503, "ServiceUnavailable",
                f"agent {served.name!r} runs in batch mode and has no model server between batches; "
                "make it a service-mode agent or start the gateway with --ollama-host",
            )  # fmt: skip
        if served.host not in self._clients:
            self._clients[served.host] = ModelClient(
                served.host, concurrency=max(1, served.agent.spec.num_parallel), timeout=self.timeout
            )
        return self._clients[served.host]

    def _prepare(self, served: ServedAgent, request: AgentRequest) -> tuple[Any, StageSettings]:
        config = agent_config(served.name, served.agent.spec)
        settings = StageSettings(
            question=request.question,
            labels=tuple(request.labels) if request.labels else None,
            output_schema=request.output_schema,
            prompt=request.prompt,
        )
        r = role(config.role)
        if r.name == AgentRole.CLASSIFIER and not settings.labels:
            raise GatewayError(
                422, "Invalid", f"agent {served.name!r} is a classifier: send labels (two or more)"
            )
        if served.agent.spec.context_tokens:
            budget = served.agent.spec.context_tokens - r.overhead_tokens(settings) - r.answer_tokens
            tokens = len(load_encoding().encode_ordinary(request.text))
            if tokens > budget:
                raise GatewayError(
                    413, "RequestEntityTooLarge",
                    f"text has {tokens} tokens; agent {served.name!r} ({served.agent.spec.model}, context "
                    f"{served.agent.spec.context_tokens}) fits {max(0, budget)}: submit a task to chunk it",
                )  # fmt: skip
        return config, settings

    async def call(self, served: ServedAgent, request: AgentRequest) -> AgentResponse:
        config, settings = self._prepare(served, request)
        client = self._client(served)
        started = time.perf_counter()
        try:
            result, error, attempts = await asyncio.wait_for(
                call_agent(client, config, settings, request.text, None, CONTRACT_RETRIES), self.timeout
            )
        except TimeoutError as e:
            raise GatewayError(
                504,
                "Timeout",
                f"agent {served.name!r} did not answer within {self.timeout:g}s (retries included)",
            ) from e
        if result is None:
            status = 422 if error and error.startswith("output contract") else 502
            raise GatewayError(
                status, "BadGateway" if status == 502 else "Invalid", f"agent {served.name!r}: {error}"
            )
        value, _ = role(config.role).check(result.content, settings)
        return AgentResponse(
            agent=served.name, model=config.model, role=config.role, response=value,
            promptTokens=result.prompt_tokens, evalTokens=result.eval_tokens,
            durationMs=round((time.perf_counter() - started) * 1000, 1), attempts=attempts, cached=result.cached,
        )  # fmt: skip

    async def stream(self, served: ServedAgent, request: AgentRequest) -> AsyncIterator[bytes]:
        """NDJSON: {"response": piece} lines, then {"done": true, ...}; an error mid-stream ends
        it with {"error": message} (the status line was already sent)."""
        config, settings = self._prepare(served, request)
        r = role(config.role)
        if r.output_schema(settings) is not None:
            raise GatewayError(
                422,
                "Invalid",
                f"agent {served.name!r} answers JSON ({r.name}); streaming is for free-text roles",
            )
        client = self._client(served)
        messages = r.messages(request.text, settings)
        iterator = client.chat_stream(
            config.model, messages, options=config.options, keep_alive=config.keep_alive
        )
        try:
            first = await anext(iterator)  # errors before any text become an HTTP error status
        except StopAsyncIteration:
            first = ""
        except ModelCallError as e:
            raise GatewayError(502, "BadGateway", f"agent {served.name!r}: {e}") from e

        async def lines() -> AsyncIterator[bytes]:
            started, parts = time.perf_counter(), [first]
            yield json.dumps({"response": first}).encode() + b"\n"
            try:
                async for piece in iterator:
                    parts.append(piece)
                    yield json.dumps({"response": piece}).encode() + b"\n"
            except ModelCallError as e:
                yield json.dumps({"error": str(e)}).encode() + b"\n"
                return
            done = {"done": True, "agent": served.name, "model": config.model, "role": config.role,
                    "durationMs": round((time.perf_counter() - started) * 1000, 1)}  # fmt: skip
            yield json.dumps(done).encode() + b"\n"

        return lines()

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
