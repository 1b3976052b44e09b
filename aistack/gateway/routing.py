"""Authentication and authorization before anything else, as the Kubernetes API server orders it
(authn -> authz -> decoding and validation): a request without a valid token gets 401, and a
caller who may not write gets 401/403, whatever its body holds, even a body that is not JSON.

FastAPI reads and validates the body (and the query) before a route's dependencies run, so the
check is made in a custom APIRoute class (FastAPI's documented extension point) that runs the
route's guard first. Every route must declare its guard, or declare that it is open: a route
added without one fails at startup instead of serving unauthenticated."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.routing import APIRoute

from aistack.gateway.auth import Caller

Guard = Callable[[Request], Awaitable[Caller]]
OPEN = "open"  # a route anyone may call: health, readiness, metrics
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def guarded(guard: Guard | str) -> Callable[[Endpoint], Endpoint]:
    """Mark an endpoint with the guard that runs before its request is read (or OPEN)."""

    def mark(endpoint: Endpoint) -> Endpoint:
        endpoint.guard = guard  # type: ignore[attr-defined]
        return endpoint

    return mark


class GuardedRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()
        guard = getattr(self.endpoint, "guard", None)
        if guard is None:
            raise TypeError(f"route {self.path} declares no guard: mark it @guarded(guard) or @guarded(OPEN)")
        if guard == OPEN:
            return handler

        async def guarded_handler(request: Request) -> Response:
            request.state.caller = await guard(request)
            return await handler(request)

        return guarded_handler


def caller_of(request: Request) -> Caller:
    """The caller its route's guard let in."""
    caller: Caller = request.state.caller
    return caller
