"""aistack's embedded model server: Ollama's REST API in front of the extractive engine.

It lets every pipeline run on a machine with no Ollama and no GPU, through the very same
client code path (the official `ollama` client over HTTP). It speaks `/api/chat`,
`/api/generate` (NDJSON streaming by default, or `stream: false`), `/api/embed`, `/api/tags`,
`/api/show`, `/api/ps`, `/api/version`, `/api/pull` and `HEAD /`, with Ollama's fields,
error bodies and status codes (400, 404, 503 when the queue is full). `/api/show` says what
it really is. `parallel` bounds concurrent generations like `OLLAMA_NUM_PARALLEL`;
`max_queue` like `OLLAMA_MAX_QUEUE`. `Faults` inject latency, 5xx errors and dropped
connections for reliability tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web

from aistack.etl.encodings import load_encoding
from aistack.steps import engine

BUILTIN_MODEL = "aistack-extractive:latest"
BUSY = "server busy, please try again.  maximum pending requests exceeded"
CRASH = "llama runner process has terminated: signal: killed"

try:
    _VERSION = version("aistack")
except PackageNotFoundError:  # pragma: no cover
    _VERSION = "0.0.0"


def normalize(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def digest(name: str) -> str:
    return hashlib.sha256(
        f"aistack-extractive/{engine.ENGINE_VERSION}/{normalize(name)}".encode()
    ).hexdigest()


@dataclass
class Faults:
    """Test-only fault injection; each request draws once from a seeded generator."""

    latency: float = 0.0  # seconds each generation holds its slot
    error_rate: float = 0.0  # answered 503 (busy) or 500 (runner crash), alternating
    drop_rate: float = 0.0  # connection closed with no response
    slow_rate: float = 0.0  # requests that take `slow_seconds` more
    slow_seconds: float = 0.0
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """`latency=0.05,error_rate=0.1,...` (the CLI's --faults)."""
        values: dict[str, Any] = {}
        for item in filter(None, spec.split(",")):
            key, _, raw = item.partition("=")
            if key not in cls.__dataclass_fields__:
                raise ValueError(f"unknown fault {key!r}; known: {sorted(cls.__dataclass_fields__)}")
            values[key] = int(raw) if key == "seed" else float(raw)
        return cls(**values)


@dataclass
class EmbeddedModelServer:
    models: list[str] = field(default_factory=list)  # extra names served by the engine
    parallel: int = 4
    max_queue: int = 512
    context_length: int = 8192
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        self.names = {normalize(BUILTIN_MODEL), *(normalize(m) for m in self.models)}
        self.stats: Counter[str] = Counter()
        self._rng = random.Random(self.faults.seed)
        self._errors = 0
        self._pending = 0
        self._slots: asyncio.Semaphore | None = None
        self._loaded: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ------------------------------------------------------------------ app

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("GET", "/", self._root)
        app.router.add_route("HEAD", "/", self._root)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/pull", self._pull)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_post("/api/embed", self._embed)
        return app

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": f"{_VERSION}-aistack-embedded"})

    def _model_entry(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": "2026-01-01T00:00:00Z",
            "size": 0,
            "digest": digest(name),
            "details": {
                "parent_model": "",
                "format": "aistack",
                "family": "aistack-extractive",
                "families": ["aistack-extractive"],
                "parameter_size": "0",
                "quantization_level": "none",
            },
        }

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [self._model_entry(n) for n in sorted(self.names)]})

    async def _ps(self, request: web.Request) -> web.Response:
        expires = datetime.fromtimestamp(time.time() + 300, UTC).isoformat().replace("+00:00", "Z")
        running = [
            {
                **self._model_entry(n),
                "expires_at": expires,
                "size_vram": 0,
                "context_length": self.context_length,
            }
            for n in sorted(self._loaded)
        ]
        return web.json_response({"models": running})

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        raw = await request.read()
        if not raw:
            return self._error(400, "missing request body")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            return self._error(400, f"invalid character in request body: {exc.msg}")
        if not isinstance(body, dict):
            return self._error(400, "request body must be a JSON object")
        return body

    def _known(self, body: dict[str, Any]) -> str | web.Response:
        name = body.get("model") or body.get("name")
        if not name or not isinstance(name, str):
            return self._error(400, "model is required")
        full = normalize(name)
        if full not in self.names:
            return self._error(404, f'model "{name}" not found, try pulling it first')
        return full

    async def _model_request(self, request: web.Request) -> tuple[dict[str, Any], str] | web.Response:
        """The JSON body and the served model it names, or Ollama's error response."""
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        name = self._known(body)
        return name if isinstance(name, web.Response) else (body, name)

    async def _show(self, request: web.Request) -> web.Response:
        parsed = await self._model_request(request)
        if isinstance(parsed, web.Response):
            return parsed
        _, name = parsed
        return web.json_response(
            {
                "modelfile": "# aistack embedded engine: deterministic and extractive, not a language model.\n"
                f"# It quotes and scores the given context; engine version {engine.ENGINE_VERSION}.\n",
                "parameters": f"num_ctx {self.context_length}",
                "template": "{{ .Prompt }}",
                "details": self._model_entry(name)["details"],
                "model_info": {
                    "general.architecture": "aistack-extractive",
                    "general.description": "aistack embedded extractive engine (not a language model)",
                    "aistack-extractive.context_length": self.context_length,
                },
                "capabilities": ["completion"],
                "modified_at": "2026-01-01T00:00:00Z",
            }
        )

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("model") or body.get("name") or ""
        known = normalize(str(name)) in self.names
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        if known:
            d = digest(str(name))
            lines += [
                {"status": f"pulling {d[:12]}", "digest": f"sha256:{d}", "total": 1, "completed": 1},
                {"status": "verifying sha256 digest"},
                {"status": "writing manifest"},
                {"status": "success"},
            ]
        else:
            lines.append({"error": "pull model manifest: file does not exist"})
        if body.get("stream", True) is False:
            if not known:
                return self._error(500, lines[-1]["error"])
            return web.json_response({"status": "success"})
        return await self._ndjson(request, lines)

    async def _ndjson(self, request: web.Request, lines: list[dict[str, Any]]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for line in lines:
            await resp.write(json.dumps(line).encode() + b"\n")
        await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ generation

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        self.stats["requests"] += 1
        parsed = await self._model_request(request)
        if isinstance(parsed, web.Response):
            return parsed
        body, name = parsed
        fmt = body.get("format")
        if fmt not in (None, "", "json") and not isinstance(fmt, dict):
            return self._error(
                400, f'invalid format: {json.dumps(fmt)}; expected "json" or a valid JSON Schema object'
            )
        if chat:
            messages = body.get("messages")
            if messages is not None and not isinstance(messages, list):
                return self._error(400, "messages must be a list")
            messages = messages or []
            system = "\n".join(m.get("content", "") for m in messages if m.get("role") == "system")
            prompt = "\n\n".join(m.get("content", "") for m in messages if m.get("role") != "system")
        else:
            system, prompt = str(body.get("system") or ""), str(body.get("prompt") or "")
        if self._pending >= self.max_queue:
            self.stats["busy"] += 1
            return self._error(503, BUSY)
        fault = self._draw_fault()
        if fault == "drop":
            self.stats["dropped"] += 1
            assert request.transport is not None
            request.transport.abort()  # the client sees the connection die with no response
            raise asyncio.CancelledError
        if fault in ("busy", "crash"):
            self.stats[fault] += 1
            return self._error(503, BUSY) if fault == "busy" else self._error(500, CRASH)
        started = time.perf_counter_ns()
        self._pending += 1
        try:
            assert self._slots is not None
            async with self._slots:
                self.stats["generations"] += 1
                load_ns = 0
                if name not in self._loaded:
                    load_ns = 1_000_000
                self._loaded[name] = time.time()
                slot_started = time.perf_counter()
                if not prompt.strip() and not system.strip():
                    return self._final(request, body, name, chat, "", started, load_ns, 0, "load")
                options = body.get("options") or {}
                content = engine.respond(prompt, system, fmt or None)
                num_predict = options.get("num_predict")
                reason = "stop"
                if isinstance(num_predict, int) and num_predict > 0 and fmt is None:
                    enc = load_encoding()
                    tokens = enc.encode_ordinary(content)
                    if len(tokens) > num_predict:
                        content, reason = enc.decode(tokens[:num_predict]), "length"
                prompt_tokens = len(load_encoding().encode_ordinary(system + prompt))
                # `latency` is the whole time a generation holds its slot, compute included
                delay = self.faults.latency + (self.faults.slow_seconds if fault == "slow" else 0.0)
                remaining = delay - (time.perf_counter() - slot_started)
                if remaining > 0:
                    await asyncio.sleep(remaining)
        finally:
            self._pending -= 1
        if body.get("stream", True) is False:
            return self._final(request, body, name, chat, content, started, load_ns, prompt_tokens, reason)
        return await self._stream(request, name, chat, content, started, load_ns, prompt_tokens, reason)

    def _draw_fault(self) -> str | None:
        f = self.faults
        roll = self._rng.random()
        if roll < f.drop_rate:
            return "drop"
        if roll < f.drop_rate + f.error_rate:
            self._errors += 1
            return "busy" if self._errors % 2 else "crash"
        if roll < f.drop_rate + f.error_rate + f.slow_rate:
            return "slow"
        return None

    @staticmethod
    def _now() -> str:
        return datetime.now(UTC).isoformat().replace("+00:00", "Z")

    def _metrics(
        self, content: str, started: int, load_ns: int, prompt_tokens: int, reason: str
    ) -> dict[str, Any]:
        total = time.perf_counter_ns() - started
        eval_count = len(load_encoding().encode_ordinary(content)) if content else 0
        return {
            "done": True,
            "done_reason": reason,
            "total_duration": total,
            "load_duration": load_ns,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": total // 4,
            "eval_count": eval_count,
            "eval_duration": total // 2,
        }

    def _final(
        self, request: web.Request, body: dict[str, Any], name: str, chat: bool, content: str,
        started: int, load_ns: int, prompt_tokens: int, reason: str,
    ) -> web.Response:  # fmt: skip
        out = self._part(name, chat, content, done=True)
        out.update(self._metrics(content, started, load_ns, prompt_tokens, reason))
        return web.json_response(out)

    def _part(self, name: str, chat: bool, text: str, done: bool) -> dict[str, Any]:
        """One response object: chat carries a message, generate a response string."""
        part: dict[str, Any] = {"model": name, "created_at": self._now(), "done": done}
        if chat:
            part["message"] = {"role": "assistant", "content": text}
        else:
            part["response"] = text
        return part

    async def _stream(
        self, request: web.Request, name: str, chat: bool, content: str,
        started: int, load_ns: int, prompt_tokens: int, reason: str,
    ) -> web.StreamResponse:  # fmt: skip
        pieces = content.split(" ")
        lines = [self._part(name, chat, p if i == 0 else " " + p, done=False) for i, p in enumerate(pieces)]
        final = self._part(name, chat, "", done=True)
        final.update(self._metrics(content, started, load_ns, prompt_tokens, reason))
        return await self._ndjson(request, [*lines, final])

    async def _embed(self, request: web.Request) -> web.Response:
        parsed = await self._model_request(request)
        if isinstance(parsed, web.Response):
            return parsed
        body, name = parsed
        inputs = body.get("input", [])
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        vectors = []
        for text in inputs:
            raw = hashlib.sha256(str(text).encode()).digest() * 2
            vec = [b / 255.0 for b in raw]
            norm = sum(v * v for v in vec) ** 0.5 or 1.0
            vectors.append([v / norm for v in vec])
        tokens = sum(len(load_encoding().encode_ordinary(str(t))) for t in inputs)
        return web.json_response(
            {
                "model": name,
                "embeddings": vectors,
                "total_duration": 1000,
                "load_duration": 0,
                "prompt_eval_count": tokens,
            }
        )

    # ------------------------------------------------------------------ running

    async def _start_site(self, host: str, port: int) -> str:
        self._slots = asyncio.Semaphore(self.parallel)
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=1024)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        bound_host, bound_port = sock.getsockname()[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        return self.url

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on a background thread with its own event loop; returns the base URL."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._start_site(host, port))
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="aistack-model-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self.url

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        loop, runner = self._loop, self._runner
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread:
            self._thread.join(timeout=10)
        loop.close()
        self._loop = self._runner = None

    def __enter__(self) -> EmbeddedModelServer:
        if not self.url:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def serve(self, host: str, port: int) -> None:
        """Serve in the current event loop until cancelled (the CLI)."""
        await self._start_site(host, port)
        try:
            await asyncio.Event().wait()
        finally:
            assert self._runner is not None
            await self._runner.cleanup()
