"""Request limits as ASGI middleware: body size, in-flight requests per caller, and metrics.

Written against the raw ASGI interface so that it can count the body as it streams in (a missing
or false Content-Length cannot get a larger body through) and so streaming responses pass through
untouched."""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ClientLimiter:
    """At most `limit` requests in flight per caller (bearer token, or address when anonymous)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._inflight: defaultdict[str, int] = defaultdict(int)

    def acquire(self, key: str) -> bool:
        if self._inflight[key] >= self.limit:
            return False
        self._inflight[key] += 1
        return True

    def release(self, key: str) -> None:
        self._inflight[key] -= 1
        if self._inflight[key] <= 0:
            del self._inflight[key]


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; an HTTPException so that FastAPI's body parsing passes it
    on (it turns other errors into 400) and the app's handler answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over {limit} bytes")


def _client_key(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return "token:" + hashlib.sha256(value).hexdigest()[:16]
    client = scope.get("client")
    return f"addr:{client[0] if client else 'unknown'}"


async def _status(
    send: Send, code: int, reason: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(
        {"kind": "Status", "code": code, "reason": reason, "message": message, "details": []}
    ).encode()
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class LimitsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        limiter: ClientLimiter,
        metrics: Any,
        exempt: tuple[str, ...],
    ) -> None:
        self.app, self.max_body_bytes, self.limiter, self.metrics, self.exempt = (
            app,
            max_body_bytes,
            limiter,
            metrics,
            exempt,
        )

    async def _too_large(self, send: Send) -> None:
        await _status(
            send, 413, "RequestEntityTooLarge", f"the request body is over {self.max_body_bytes} bytes"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        # bounded label values: a fuzzer's random paths must not create series
        parts = path.strip("/").split("/")
        route = (
            path
            if path in self.exempt
            else ("/" + "/".join(parts[:2]) if parts[0] == "v1" else "/{endpoint}")
        )
        started, code = time.perf_counter(), 500

        async def send_counted(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            if path in self.exempt:
                await self.app(scope, receive, send_counted)
                return
            declared = dict(scope.get("headers", [])).get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
                code = 413
                await self._too_large(send)
                return
            key = _client_key(scope)
            if not self.limiter.acquire(key):
                code = 429
                await _status(send, 429, "TooManyRequests", f"more than {self.limiter.limit} requests in flight from this client",
                              [(b"retry-after", b"1")])  # fmt: skip
                return
            received = 0

            async def receive_counted() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        raise BodyTooLarge(self.max_body_bytes)
                return message

            self.metrics.inflight.inc()
            try:
                await self.app(scope, receive_counted, send_counted)
            except BodyTooLarge:
                code = 413
                await self._too_large(send)
            finally:
                self.metrics.inflight.dec()
                self.limiter.release(key)
        finally:
            self.metrics.requests.labels(route, method, str(code)).inc()
            self.metrics.seconds.labels(route).observe(time.perf_counter() - started)
