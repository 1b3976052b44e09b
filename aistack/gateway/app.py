"""The gateway's HTTP API (FastAPI). Errors are JSON in Kubernetes' Status shape:
{"kind": "Status", "code": 422, "reason": "Invalid", "message": "...", "details": [...]}."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from aistack import __version__
from aistack.gateway.agents import (
    AgentCaller,
    AgentDirectory,
    AgentRequest,
    AgentResponse,
    ServedAgent,
    resolve_bare,
)
from aistack.gateway.auth import Access, Authenticator, AuthError, Caller, bearer
from aistack.gateway.docs import serve_docs
from aistack.gateway.limits import ClientLimiter, LimitsMiddleware
from aistack.gateway.tasks import GatewayError, TaskBackend, validated

log = logging.getLogger("aistack.gateway")
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
Namespace = Annotated[
    str | None, Query(max_length=63, pattern=NAME_PATTERN, description="default: the gateway's namespace")
]


class TaskMetadata(BaseModel):
    name: str | None = Field(None, max_length=63, pattern=NAME_PATTERN)
    generateName: str | None = Field(None, max_length=57, pattern=r"^[a-z0-9]([-a-z0-9]*)?$")
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class TaskSubmission(BaseModel):
    """A TaskOrchestration: its spec (as in the CRD, docs/ollama-crd-spec.md) and optionally its
    metadata; apiVersion and kind may be given and must then be ai.stack/v1alpha1 TaskOrchestration."""

    apiVersion: str | None = None
    kind: str | None = None
    metadata: TaskMetadata | None = None
    spec: dict[str, Any]


class Submitted(BaseModel):
    name: str
    namespace: str
    statusUrl: str
    task: dict[str, Any]


class Status(BaseModel):
    kind: str = "Status"
    code: int
    reason: str
    message: str
    details: list[str] = []


def error(
    code: int,
    reason: str,
    message: str,
    details: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = Status(code=code, reason=reason, message=message, details=details or []).model_dump()
    return JSONResponse(body, status_code=code, headers=headers)


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Status} for code in (400, 401, 403, 404, 409, 413, 422, 429, 502, 503, 504)
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("aistack_gateway_requests_total", "Requests by route, method and status code",
                                ["route", "method", "code"], registry=self.registry)  # fmt: skip
        self.seconds = Histogram(
            "aistack_gateway_request_seconds", "Request latency by route", ["route"], registry=self.registry
        )
        self.inflight = Gauge(
            "aistack_gateway_inflight_requests", "Requests being served", registry=self.registry
        )
        self.agent_tokens = Counter("aistack_gateway_agent_tokens_total", "Tokens of synchronous agent calls",
                                    ["agent", "kind"], registry=self.registry)  # fmt: skip


def create_app(
    *,
    tasks: TaskBackend,
    agents: AgentDirectory,
    auth: Authenticator,
    default_namespace: str = "default",
    max_body_bytes: int = 1 << 20,
    client_concurrency: int = 8,
    request_timeout: float = 300.0,
    on_shutdown: Callable[[], Awaitable[None] | None] | None = None,
) -> FastAPI:
    caller_pool = AgentCaller(request_timeout)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await caller_pool.close()
        if on_shutdown is not None:
            result = on_shutdown()
            if result is not None:
                await result

    app = FastAPI(
        title="aistack gateway",
        version=__version__,
        description="Submit TaskOrchestrations and follow them; call agents synchronously.",
        lifespan=lifespan,
        responses=ERRORS,
        docs_url=None,  # served from the package by serve_docs: no CDN
        redoc_url=None,
    )
    serve_docs(app)
    app.add_middleware(
        LimitsMiddleware,
        max_body_bytes=max_body_bytes,
        limiter=ClientLimiter(client_concurrency),
        metrics=metrics,
        exempt=("/healthz", "/readyz", "/metrics"),
    )

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return error(exc.status, exc.reason, exc.message, exc.details)

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        reason = "Unauthorized" if exc.status == 401 else "Forbidden"
        headers = {"WWW-Authenticate": 'Bearer realm="aistack"'} if exc.status == 401 else None
        return error(exc.status, reason, exc.message, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return error(422, "Invalid", "the request is invalid", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reasons = {404: "NotFound", 405: "MethodNotAllowed", 413: "RequestEntityTooLarge"}
        return error(
            exc.status_code,
            reasons.get(exc.status_code, "Error"),
            str(exc.detail),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error(500, "InternalError", f"{type(exc).__name__}: {exc}")

    async def authenticate(request: Request) -> Caller:
        # in a thread: the Kubernetes client is synchronous
        return await run_in_threadpool(auth.authenticate, bearer(request.headers.get("authorization")))

    async def check(request: Request, access: Access, caller: Caller | None = None) -> Caller:
        """Authenticate the bearer token (unless done), then authorize this access."""
        caller = caller or await authenticate(request)
        await run_in_threadpool(auth.authorize, caller, access)
        return caller

    # --- health and metrics ---
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> dict[str, str]:
        try:
            await run_in_threadpool(tasks.ready)
        except GatewayError as e:  # e.g. the API server cannot be reached: not ready, not an error of ours
            raise GatewayError(503, "ServiceUnavailable", f"not ready: {e.message}") from e
        return {"status": "ready"}

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # --- tasks ---

    @app.post("/v1/tasks", status_code=201, response_model=Submitted, tags=["tasks"])
    async def submit_task(
        request: Request,
        response: Response,
        body: Annotated[TaskSubmission, Body()],
        namespace: Namespace = None,
    ) -> Submitted:
        ns = namespace or default_namespace
        caller = await check(request, Access("create", "taskorchestrations", ns, write=True))
        meta = body.metadata or TaskMetadata()
        name = meta.name or f"{meta.generateName or 'task-'}{secrets.token_hex(3)}"
        obj = validated(body.model_dump(exclude_none=True), ns, name)
        created = await run_in_threadpool(tasks.create, obj, caller.name)
        url = f"/v1/tasks/{name}?namespace={ns}"
        response.headers["Location"] = url
        return Submitted(name=name, namespace=ns, statusUrl=url, task=created)

    @app.get("/v1/tasks", tags=["tasks"])
    async def list_tasks(request: Request, namespace: Namespace = None) -> dict[str, Any]:
        ns = namespace or default_namespace
        await check(request, Access("list", "taskorchestrations", ns))
        return {"items": await run_in_threadpool(tasks.list, ns)}

    @app.get("/v1/tasks/{name}", tags=["tasks"])
    async def get_task(request: Request, name: str, namespace: Namespace = None) -> dict[str, Any]:
        ns = namespace or default_namespace
        await check(request, Access("get", "taskorchestrations", ns, name))
        return await run_in_threadpool(tasks.get, ns, name)

    @app.delete("/v1/tasks/{name}", tags=["tasks"])
    async def delete_task(request: Request, name: str, namespace: Namespace = None) -> dict[str, Any]:
        ns = namespace or default_namespace
        await check(request, Access("delete", "taskorchestrations", ns, name, write=True))
        await run_in_threadpool(tasks.delete, ns, name)
        return {"kind": "Status", "status": "Success", "details": {"name": name, "namespace": ns}}

    # --- agents ---
    @app.get("/v1/agents", tags=["agents"])
    async def list_agents(request: Request, namespace: Namespace = None) -> dict[str, Any]:
        ns = namespace or default_namespace
        await check(request, Access("list", "ollamaagents", ns))
        served = await run_in_threadpool(agents.agents, ns)
        return {"items": [a.describe() for a in sorted(served.values(), key=lambda a: a.name)]}

    async def invoke(request: Request, caller: Caller, served: ServedAgent, call: AgentRequest) -> Any:
        await check(
            request,
            Access("create", "ollamaagents", served.namespace, served.name, "invoke", write=True),
            caller,
        )
        if call.stream:
            return StreamingResponse(
                await caller_pool.stream(served, call), media_type="application/x-ndjson"
            )
        result = await caller_pool.call(served, call)
        metrics.agent_tokens.labels(served.name, "prompt").inc(result.promptTokens)
        metrics.agent_tokens.labels(served.name, "eval").inc(result.evalTokens)
        return result

    @app.post("/v1/agents/{agent}/{endpoint:path}", response_model=AgentResponse, tags=["agents"],
              responses={200: {"content": {"application/x-ndjson": {}}, "description": "the answer; NDJSON when stream is true"}})  # fmt: skip
    async def call_agent(
        request: Request,
        agent: str,
        endpoint: str,
        call: AgentRequest,
        namespace: Namespace = None,
    ) -> Any:
        ns = namespace or default_namespace
        caller = await authenticate(request)  # before anything about agents is revealed
        served = (await run_in_threadpool(agents.agents, ns)).get(agent)
        if served is None:
            raise GatewayError(
                404,
                "NotFound",
                f"no ready agent {agent!r} with an endpoint in namespace {ns!r}; see GET /v1/agents",
            )
        if served.endpoint != f"/{endpoint}":
            raise GatewayError(404, "NotFound", f"agent {agent!r} serves {served.endpoint}, not /{endpoint}")
        return await invoke(request, caller, served, call)

    @app.post("/{endpoint:path}", response_model=AgentResponse, tags=["agents"],
              summary="Call the one agent that serves this endpoint (e.g. POST /summarize)")  # fmt: skip
    async def call_bare_endpoint(
        request: Request, endpoint: str, call: AgentRequest, namespace: Namespace = None
    ) -> Any:
        ns = namespace or default_namespace
        caller = await authenticate(request)
        served = resolve_bare(await run_in_threadpool(agents.agents, ns), f"/{endpoint}")
        return await invoke(request, caller, served, call)

    return app
