"""The gateway's HTTP API (FastAPI). Errors are JSON in Kubernetes' Status shape:
{"kind": "Status", "code": 422, "reason": "Invalid", "message": "...", "details": [...]}."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
from aistack.gateway.routing import OPEN, Guard, GuardedRoute, caller_of, guarded
from aistack.gateway.tasks import GatewayError, TaskBackend, validated
from aistack.inputs import InputPolicy, InputRefused
from aistack.messages import describe, issues, joined, one_line

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
    # one line each, whatever an exception or the API server put in them
    body = Status(
        code=code, reason=reason, message=one_line(message), details=[one_line(d) for d in details or []]
    ).model_dump()
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


def request_issues(errors: Sequence[Any]) -> list[str]:
    """FastAPI's validation errors as `field.path: what is wrong`: body fields by their path in
    the document (`metadata.name`), query parameters as `query.namespace`."""
    found = []
    for e in errors:
        loc = list(e.get("loc") or ())
        if e.get("type") == "json_invalid":
            reason = (e.get("ctx") or {}).get("error", "")
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            found.append(f"body: not valid JSON{at}" + (f" ({reason})" if reason else ""))
            continue
        if loc[:1] == ["body"]:
            loc = loc[1:] or ["body"]
        found.extend(issues([{**e, "loc": loc}]))
    return found


def create_app(
    *,
    tasks: TaskBackend,
    agents: AgentDirectory,
    auth: Authenticator,
    inputs: InputPolicy,
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
    app.router.route_class = GuardedRoute  # every route below runs its guard before reading the request
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
        details = request_issues(exc.errors())
        return error(422, "Invalid", f"the request is invalid: {joined(details)}", details)

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
        return error(500, "InternalError", f"{type(exc).__name__}: {describe(exc)}")

    async def authenticate(request: Request) -> Caller:
        # in a thread: the Kubernetes client is synchronous
        return await run_in_threadpool(auth.authenticate, bearer(request.headers.get("authorization")))

    def namespace_of(request: Request) -> str:
        # read raw: the guard runs before FastAPI validates the query (then it is checked as usual)
        return request.query_params.get("namespace") or default_namespace

    def access(verb: str, resource: str, *, named: bool = False, write: bool = False) -> Guard:
        """The guard of a route that is one Kubernetes access: authenticate, then authorize."""

        async def guard(request: Request) -> Caller:
            caller = await authenticate(request)
            name = request.path_params.get("name") if named else None
            await run_in_threadpool(
                auth.authorize, caller, Access(verb, resource, namespace_of(request), name, write=write)
            )
            return caller

        return guard

    def agent_guard(find: Callable[[Request, str], Awaitable[ServedAgent]]) -> Guard:
        """Authenticate, and authorize the call before anything about agents is looked up or
        revealed: on the agent's name when the path has it (as the API server authorizes a
        named request before it looks for the object), else on the agent the endpoint resolves
        to, or on the namespace when it resolves to none."""

        async def guard(request: Request) -> Caller:
            caller = await authenticate(request)
            ns, named = namespace_of(request), request.path_params.get("agent")

            async def may_invoke(name: str | None) -> None:
                access = Access("create", "ollamaagents", ns, name, "invoke", write=True)
                await run_in_threadpool(auth.authorize, caller, access)

            if named is not None:
                await may_invoke(named)
            try:
                if not re.match(NAME_PATTERN, ns) or len(ns) > 63:
                    raise GatewayError(422, "Invalid", f"query.namespace: {ns!r} is not a DNS-1123 label")
                served = await find(request, ns)
            except GatewayError:
                if named is None:
                    await may_invoke(None)  # a caller who may not invoke learns nothing of the agents
                raise
            if named is None:
                await may_invoke(served.name)
            request.state.served = served
            return caller

        return guard

    async def named_agent(request: Request, ns: str) -> ServedAgent:
        agent, endpoint = request.path_params["agent"], request.path_params["endpoint"]
        served = (await run_in_threadpool(agents.agents, ns)).get(agent)
        if served is None:
            raise GatewayError(
                404,
                "NotFound",
                f"no ready agent {agent!r} with an endpoint in namespace {ns!r}; see GET /v1/agents",
            )
        if served.endpoint != f"/{endpoint}":
            raise GatewayError(404, "NotFound", f"agent {agent!r} serves {served.endpoint}, not /{endpoint}")
        return served

    async def bare_agent(request: Request, ns: str) -> ServedAgent:
        return resolve_bare(await run_in_threadpool(agents.agents, ns), f"/{request.path_params['endpoint']}")

    # --- health and metrics ---
    @app.get("/healthz", tags=["health"])
    @guarded(OPEN)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    @guarded(OPEN)
    async def readyz() -> dict[str, str]:
        try:
            await run_in_threadpool(tasks.ready)
        except GatewayError as e:  # e.g. the API server or the model server is down: not ready
            raise GatewayError(503, "ServiceUnavailable", f"not ready: {e.message}") from e
        return {"status": "ready"}

    @app.get("/metrics", tags=["health"], response_class=Response)
    @guarded(OPEN)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # --- tasks ---

    @app.post("/v1/tasks", status_code=201, response_model=Submitted, tags=["tasks"])
    @guarded(access("create", "taskorchestrations", write=True))
    async def submit_task(
        request: Request,
        response: Response,
        body: Annotated[TaskSubmission, Body()],
        namespace: Namespace = None,
    ) -> Submitted:
        ns = namespace or default_namespace
        meta = body.metadata or TaskMetadata()
        name = meta.name or f"{meta.generateName or 'task-'}{secrets.token_hex(3)}"
        obj = validated(body.model_dump(exclude_none=True), ns, name)
        try:
            inputs.check(obj["spec"].get("input"))
        except InputRefused as e:
            raise GatewayError(
                403 if e.policy else 422, "Forbidden" if e.policy else "Invalid", str(e)
            ) from e
        created = await run_in_threadpool(tasks.create, obj, caller_of(request).name)
        url = f"/v1/tasks/{name}?namespace={ns}"
        response.headers["Location"] = url
        return Submitted(name=name, namespace=ns, statusUrl=url, task=created)

    @app.get("/v1/tasks", tags=["tasks"])
    @guarded(access("list", "taskorchestrations"))
    async def list_tasks(request: Request, namespace: Namespace = None) -> dict[str, Any]:
        return {"items": await run_in_threadpool(tasks.list, namespace or default_namespace)}

    @app.get("/v1/tasks/{name}", tags=["tasks"])
    @guarded(access("get", "taskorchestrations", named=True))
    async def get_task(request: Request, name: str, namespace: Namespace = None) -> dict[str, Any]:
        return await run_in_threadpool(tasks.get, namespace or default_namespace, name)

    @app.delete("/v1/tasks/{name}", tags=["tasks"])
    @guarded(access("delete", "taskorchestrations", named=True, write=True))
    async def delete_task(request: Request, name: str, namespace: Namespace = None) -> dict[str, Any]:
        ns = namespace or default_namespace
        await run_in_threadpool(tasks.delete, ns, name)
        return {"kind": "Status", "status": "Success", "details": {"name": name, "namespace": ns}}

    # --- agents ---
    @app.get("/v1/agents", tags=["agents"])
    @guarded(access("list", "ollamaagents"))
    async def list_agents(request: Request, namespace: Namespace = None) -> dict[str, Any]:
        served = await run_in_threadpool(agents.agents, namespace or default_namespace)
        return {"items": [a.describe() for a in sorted(served.values(), key=lambda a: a.name)]}

    async def invoke(request: Request, call: AgentRequest) -> Any:
        served: ServedAgent = request.state.served
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
    @guarded(agent_guard(named_agent))
    async def call_agent(
        request: Request,
        agent: str,
        endpoint: str,
        call: AgentRequest,
        namespace: Namespace = None,
    ) -> Any:
        return await invoke(request, call)

    @app.post("/{endpoint:path}", response_model=AgentResponse, tags=["agents"],
              summary="Call the one agent that serves this endpoint (e.g. POST /summarize)")  # fmt: skip
    @guarded(agent_guard(bare_agent))
    async def call_bare_endpoint(
        request: Request, endpoint: str, call: AgentRequest, namespace: Namespace = None
    ) -> Any:
        return await invoke(request, call)

    return app
