"""aistack's embedded model server: Ollama's REST API in front of aistack's own engines.

It lets every pipeline run on a machine with no Ollama and no GPU, through the very same client
code path (the official `ollama` client over HTTP). Two engines answer (steps.engine_api):
- `llama.cpp`: a real small LLM, SmolLM2-135M-Instruct, served natively as `smollm2:135m`;
- `aistack-extractive`: deterministic, no weights, served as `aistack-extractive[:tag]`.

Any other name the server is asked to serve (`models`) is a **stand-in**: answered by
`stand_in_engine`, and said so everywhere a client can look. `/api/show` carries
`aistack.served_by`, `aistack.engine` and `aistack.stand_in` in `model_info`, and `/api/tags`
gives the engine's own digest, so a result cache never mixes a stand-in's answers with the real
model's.

Routes: `/api/chat`, `/api/generate` (NDJSON streaming by default, or `stream: false`),
`/api/embed` (extractive only), `/api/tags`, `/api/show`, `/api/ps`, `/api/version`,
`/api/pull`, `HEAD /`, with Ollama's fields, error bodies and status codes (400, 404, 503 when
the queue is full). `parallel` bounds concurrent generations per engine like
`OLLAMA_NUM_PARALLEL`, `max_queue` like `OLLAMA_MAX_QUEUE`; `Faults` inject latency, 5xx
errors and dropped connections for reliability tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web

from aistack.etl.encodings import load_encoding
from aistack.steps import model_weights, ollama_api
from aistack.steps.background_server import BackgroundServer
from aistack.steps.engine_api import (
    Engine,
    EngineError,
    Generation,
    GenerationRequest,
    keep_alive_seconds,
)
from aistack.steps.extractive import EXTRACTIVE_MODEL, ExtractiveEngine
from aistack.steps.model_names import full_name
from aistack.steps.server_faults import BUSY, CRASH, Faults

__all__ = ["BUSY", "CRASH", "EmbeddedModelServer", "Faults", "normalize"]

log = logging.getLogger(__name__)
ENGINES = ("llama", "extractive")

try:
    _VERSION = version("aistack")
except PackageNotFoundError:  # pragma: no cover
    _VERSION = "0.0.0"


normalize = full_name  # the server's name for it


def _iso(epoch: float) -> str:
    if math.isinf(epoch):  # kept loaded forever: Ollama shows a far future date
        epoch = 253402300799.0
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Served:
    """A model name this server answers to, and what really answers it."""

    name: str
    engine: str  # llama | extractive
    stand_in: bool


@dataclass
class EmbeddedModelServer(BackgroundServer):
    models: list[str] = field(default_factory=list)  # names to serve besides the native ones
    parallel: int = 4
    max_queue: int = 512
    context_length: int | None = None  # default num_ctx, like OLLAMA_CONTEXT_LENGTH
    faults: Faults = field(default_factory=Faults)
    stand_in_engine: str = "llama"  # what answers for `models` that no engine owns
    keep_alive: str | float | None = None  # default keep-alive, like OLLAMA_KEEP_ALIVE (5m)
    max_loaded: int = 3  # llama.cpp runners (one per num_ctx) kept, like OLLAMA_MAX_LOADED_MODELS

    def __post_init__(self) -> None:
        if self.stand_in_engine not in ENGINES:
            raise ValueError(f"unknown engine {self.stand_in_engine!r}; engines are {list(ENGINES)}")
        self.default_keep_alive = keep_alive_seconds(self.keep_alive, 300.0)
        self.served: dict[str, Served] = {}
        self._add(EXTRACTIVE_MODEL, "extractive", stand_in=False)
        try:
            model_weights.gguf_path()
            self._add(model_weights.NATIVE_MODEL, "llama", stand_in=False)
        except model_weights.WeightsMissingError:
            if self.stand_in_engine == "llama" and self.models:
                raise
        for name in self.models:
            full = normalize(name)
            if full in self.served:
                continue
            if full.startswith("aistack-extractive:"):  # more names of the extractive engine
                self._add(full, "extractive", stand_in=False)
            else:
                self._add(full, self.stand_in_engine, stand_in=True)
        self.stats: Counter[str] = Counter()
        self._engines: dict[str, Engine] = {}
        self._engines_lock = threading.Lock()
        self._pending = 0
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.thread_name = "aistack-model-server"

    def _add(self, name: str, engine: str, stand_in: bool) -> None:
        full = normalize(name)
        self.served[full] = Served(full, engine, stand_in)

    @property
    def names(self) -> set[str]:
        return set(self.served)

    def stand_ins(self) -> dict[str, str]:
        """Each stand-in name and the model that really answers it."""
        return {
            s.name: (model_weights.NATIVE_MODEL if s.engine == "llama" else EXTRACTIVE_MODEL)
            for s in self.served.values()
            if s.stand_in
        }

    def engine(self, kind: str) -> Engine:
        """The engine of that kind, created on first use (the LLM's weights load only if asked)."""
        with self._engines_lock:
            if kind not in self._engines:
                if kind == "llama":
                    from aistack.steps.llama_engine import LlamaEngine

                    self._engines[kind] = LlamaEngine(
                        parallel=self.parallel, context_length=self.context_length, max_loaded=self.max_loaded
                    )
                else:
                    self._engines[kind] = ExtractiveEngine()
            return self._engines[kind]

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

    async def _card(self, served: Served) -> Any:
        return await asyncio.to_thread(self.engine(served.engine).card)

    async def _model_entry(self, served: Served) -> dict[str, Any]:
        card = await self._card(served)
        return {
            "name": served.name,
            "model": served.name,
            "modified_at": "2026-01-01T00:00:00Z",
            "size": card.size,
            "digest": card.digest,
            "details": card.details,
        }

    async def _tags(self, request: web.Request) -> web.Response:
        entries = [await self._model_entry(self.served[n]) for n in sorted(self.served)]
        return web.json_response({"models": entries})

    async def _ps(self, request: web.Request) -> web.Response:
        running = []
        for kind, engine in sorted(self._engines.items()):
            for entry in engine.running():
                served = self.served.get(entry["name"]) or Served(entry["name"], kind, False)
                running.append(
                    {
                        **await self._model_entry(served),
                        "expires_at": _iso(entry["expires_at"]),
                        "size_vram": 0,
                        "context_length": entry["context_length"],
                    }
                )
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

    def _known(self, body: dict[str, Any]) -> Served | web.Response:
        name = body.get("model") or body.get("name")
        if not name or not isinstance(name, str):
            return self._error(400, "model is required")
        served = self.served.get(normalize(name))
        if served is None:
            return self._error(404, f'model "{name}" not found, try pulling it first')
        return served

    async def _model_request(self, request: web.Request) -> tuple[dict[str, Any], Served] | web.Response:
        """The JSON body and the served model it names, or Ollama's error response."""
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        served = self._known(body)
        return served if isinstance(served, web.Response) else (body, served)

    async def _show(self, request: web.Request) -> web.Response:
        parsed = await self._model_request(request)
        if isinstance(parsed, web.Response):
            return parsed
        _, served = parsed
        card = await self._card(served)
        provenance = {
            "aistack.engine": card.engine,
            "aistack.served_by": card.served_model,
            "aistack.stand_in": served.stand_in,
        }
        modelfile = card.modelfile
        if served.stand_in:
            modelfile = (
                f"# {served.name} is a STAND-IN here: {card.served_model} answers for it.\n" + modelfile
            )
        return web.json_response(
            {
                "modelfile": modelfile,
                "parameters": card.parameters,
                "template": card.template,
                "details": card.details,
                "model_info": {**card.model_info, **provenance},
                "capabilities": list(card.capabilities),
                "modified_at": "2026-01-01T00:00:00Z",
            }
        )

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        name = str(body.get("model") or body.get("name") or "")
        served = self.served.get(normalize(name)) if name else None
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        if served is not None:
            d = (await self._card(served)).digest
            lines += [
                {"status": f"pulling {d[:12]}", "digest": f"sha256:{d}", "total": 1, "completed": 1},
                {"status": "verifying sha256 digest"},
                {"status": "writing manifest"},
                {"status": "success"},
            ]
        else:  # nothing is ever downloaded: only what the server already serves "pulls"
            lines.append({"error": "pull model manifest: file does not exist"})
        if body.get("stream", True) is False:
            if served is None:
                return self._error(500, lines[-1]["error"])
            return web.json_response({"status": "success"})
        resp = await self._open_stream(request)
        for line in lines:
            await resp.write(json.dumps(line).encode() + b"\n")
        await resp.write_eof()
        return resp

    @staticmethod
    async def _open_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        return resp

    # ------------------------------------------------------------------ generation

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    def _generation_request(self, body: dict[str, Any], served: Served, chat: bool) -> GenerationRequest:
        return ollama_api.generation_request(body, served.name, chat, self.default_keep_alive)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        self.stats["requests"] += 1
        parsed = await self._model_request(request)
        if isinstance(parsed, web.Response):
            return parsed
        body, served = parsed
        try:
            gen_request = self._generation_request(body, served, chat)
        except EngineError as exc:
            return self._error(exc.status, str(exc))
        if self._pending >= self.max_queue:
            self.stats["busy"] += 1
            return self._error(503, BUSY)
        fault = self.faults.draw()
        if fault == "drop":
            self.stats["dropped"] += 1
            assert request.transport is not None
            request.transport.abort()  # the client sees the connection die with no response
            raise asyncio.CancelledError
        if fault in ("busy", "crash"):
            self.stats[fault] += 1
            return self._error(503, BUSY) if fault == "busy" else self._error(500, CRASH)
        engine = self.engine(served.engine)
        stream = body.get("stream", True) is not False
        started = time.perf_counter_ns()
        self._pending += 1
        try:
            async with self._slots.setdefault(served.engine, asyncio.Semaphore(self.parallel)):
                self.stats["generations"] += 1
                slot_started = time.perf_counter()
                if gen_request.empty:
                    load_ns = await engine.load(gen_request)
                    reason = "unload" if gen_request.keep_alive <= 0 else "load"
                    done = Generation("", reason, 0, 0, load_ns=load_ns)
                    return web.json_response(self._final(served, chat, done, started))
                if not stream:
                    generation = await engine.generate(gen_request)
                    await self._hold(fault, slot_started)
                    return web.json_response(
                        self._final(served, chat, generation, started, generation.content)
                    )
                return await self._stream(
                    request, served, chat, engine, gen_request, started, fault, slot_started
                )
        except EngineError as exc:
            return self._error(exc.status, str(exc))
        finally:
            self._pending -= 1

    async def _hold(self, fault: str | None, slot_started: float) -> None:
        """`latency` is the whole time a generation holds its slot, compute included."""
        delay = self.faults.latency + (self.faults.slow_seconds if fault == "slow" else 0.0)
        remaining = delay - (time.perf_counter() - slot_started)
        if remaining > 0:
            await asyncio.sleep(remaining)

    async def _stream(
        self, request: web.Request, served: Served, chat: bool, engine: Engine, gen_request: GenerationRequest,
        started: int, fault: str | None, slot_started: float,
    ) -> web.StreamResponse:  # fmt: skip
        """NDJSON as the engine produces text. Headers go out with the first piece, so an error
        before any text is a plain HTTP error; one after is a final `{"error": ...}` line."""
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        task = asyncio.ensure_future(engine.generate(gen_request, pieces.put_nowait))
        task.add_done_callback(lambda _: pieces.put_nowait(None))
        resp: web.StreamResponse | None = None
        try:
            while (piece := await pieces.get()) is not None:
                if resp is None:
                    resp = await self._open_stream(request)
                await resp.write(json.dumps(self._part(served, chat, piece, done=False)).encode() + b"\n")
            try:
                generation = task.result()
            except EngineError as exc:
                if resp is None:
                    return self._error(exc.status, str(exc))
                await resp.write(json.dumps({"error": str(exc)}).encode() + b"\n")
                await resp.write_eof()
                return resp
            await self._hold(fault, slot_started)
            if resp is None:
                resp = await self._open_stream(request)
            await resp.write(json.dumps(self._final(served, chat, generation, started)).encode() + b"\n")
            await resp.write_eof()
            return resp
        finally:
            if not task.done():
                task.cancel()  # the client went away: stop generating

    @staticmethod
    def _final(
        served: Served, chat: bool, generation: Generation, started: int, content: str = ""
    ) -> dict[str, Any]:
        return ollama_api.final(served.name, chat, generation, started, content)

    @staticmethod
    def _part(served: Served, chat: bool, text: str, done: bool) -> dict[str, Any]:
        return ollama_api.part(served.name, chat, text, done)

    async def _embed(self, request: web.Request) -> web.Response:
        parsed = await self._model_request(request)
        if isinstance(parsed, web.Response):
            return parsed
        body, served = parsed
        if served.engine != "extractive":
            return self._error(400, f'"{served.name}" does not support embeddings')
        inputs = body.get("input", [])
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        vectors = []
        for text in inputs:  # the extractive engine's embeddings: deterministic hashes, for tests
            raw = hashlib.sha256(str(text).encode()).digest() * 2
            vec = [b / 255.0 for b in raw]
            norm = sum(v * v for v in vec) ** 0.5 or 1.0
            vectors.append([v / norm for v in vec])
        tokens = sum(len(load_encoding().encode_ordinary(str(t))) for t in inputs)
        return web.json_response(
            {
                "model": served.name,
                "embeddings": vectors,
                "total_duration": 1000,
                "load_duration": 0,
                "prompt_eval_count": tokens,
            }
        )

    # ------------------------------------------------------------------ running

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for engine in list(self._engines.values()):
                try:
                    await engine.reap()
                except Exception:  # an unload that failed is retried on the next round
                    log.exception("unloading idle models failed")

    async def _started(self) -> None:
        self._reaper = asyncio.ensure_future(self._reap_forever())

    async def _stopping(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()

    async def _shutdown(self) -> None:
        await super()._shutdown()
        for engine in self._engines.values():
            await asyncio.to_thread(engine.close)
