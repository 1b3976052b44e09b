"""A real LLM behind the Ollama API: llama.cpp's server, embedded in-process through `xllamacpp`.

It does for the embedded model server what Ollama does over llama.cpp:
- a *runner* per context length (`num_ctx`): changing `num_ctx` loads another one, as it reloads
  the model in Ollama; at most `max_loaded` runners, idle ones evicted first;
- `n_parallel` slots per runner with continuous batching (`OLLAMA_NUM_PARALLEL`);
- Ollama's option defaults and names translated onto llama.cpp's sampling fields;
- `format` ("json" or a JSON schema) as a grammar (`response_format`);
- keep-alive: a runner stays loaded for the last request's keep_alive, then is unloaded.

Every generation runs through the streaming API, even when the client did not ask to stream, so
that a disconnected client stops the generation at the next token instead of holding a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from aistack.steps import model_weights
from aistack.steps.engine_api import (
    OLLAMA_DEFAULT_OPTIONS,
    EngineError,
    Generation,
    GenerationRequest,
    ModelCard,
    PieceFn,
)

log = logging.getLogger(__name__)

# llama.cpp reuses a slot's KV cache for a shared prompt prefix; the suffix is then computed in
# another batch split, which can change a greedy answer. Off, the same prompt always gets the same
# answer on one slot (measured: 15 of 15 equal across two orders, against 7 of 15 with it on).
CACHE_PROMPT = False
DEFAULT_CONTEXT = 4096  # Ollama's default num_ctx below 24 GiB of VRAM (OLLAMA_CONTEXT_LENGTH)
# sampling options whose names llama.cpp's server shares with Ollama
_SAMPLING = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n", "repeat_penalty",
             "presence_penalty", "frequency_penalty")  # fmt: skip


def engine_version() -> str:
    return version("xllamacpp")


def cpu_threads() -> int:
    """Threads for llama.cpp: `AISTACK_LLAMA_THREADS`, else the CPUs this process may use, bounded by
    the cgroup's CPU quota (a pod's CPU limit), so a 1-CPU pod on a 64-core node does not thrash."""
    if env := os.environ.get("AISTACK_LLAMA_THREADS"):
        return max(1, int(env))
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    return max(1, count)


def llama_request(request: GenerationRequest, num_ctx: int) -> dict[str, Any]:
    """Ollama's request, as llama.cpp's OpenAI-style endpoint takes it."""
    opts = {**OLLAMA_DEFAULT_OPTIONS, **request.options}
    body: dict[str, Any] = {k: opts[k] for k in _SAMPLING}
    if opts["seed"] >= 0:
        body["seed"] = opts["seed"]
    predict = opts["num_predict"]
    body["max_tokens"] = num_ctx if predict == -2 else predict  # -1: until stop or the context ends
    if opts.get("stop"):
        body["stop"] = list(opts["stop"])
    if request.format == "json":
        body["response_format"] = {"type": "json_object"}
    elif isinstance(request.format, dict):
        body["response_format"] = {"type": "json_object", "schema": request.format}
    body["cache_prompt"] = CACHE_PROMPT
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    if request.raw_prompt is not None:
        body["prompt"] = request.raw_prompt
    else:
        body["messages"] = [{"role": m["role"], "content": m.get("content") or ""} for m in request.messages]
    return body


@dataclass
class _Runner:
    """One loaded llama.cpp server for one context length."""

    num_ctx: int
    server: Any  # xllamacpp.Server
    load_ns: int
    active: int = 0
    expires_at: float = math.inf
    last_used: float = field(default_factory=time.monotonic)
    names: set[str] = field(default_factory=set)


class LlamaEngine:
    """SmolLM2-135M-Instruct (or another GGUF) on llama.cpp, on the CPU."""

    name = "llama.cpp"

    def __init__(
        self,
        parallel: int = 1,
        context_length: int | None = None,
        max_loaded: int = 3,
        threads: int | None = None,
        path: Path | None = None,
    ) -> None:
        self.path = path or model_weights.gguf_path()  # a clear error when the weights are missing
        self.parallel = max(1, parallel)
        self.default_context = context_length or DEFAULT_CONTEXT
        self.max_loaded = max(1, max_loaded)
        self.threads = threads or cpu_threads()
        self._runners: dict[int, _Runner] = {}
        self._loading: dict[int, asyncio.Future[_Runner]] = {}
        # generations block in llama.cpp: one thread per slot of every runner, plus loads
        self._pool = ThreadPoolExecutor(self.parallel * self.max_loaded + 2, thread_name_prefix="llama")
        # the digest and the GGUF metadata take a second or two: start now, beside the first load
        self._card: Future[ModelCard] = self._pool.submit(self._read_card)
        self._closed = threading.Event()

    # ------------------------------------------------------------------ the model card

    def _read_card(self) -> ModelCard:
        gguf = model_weights.read_card(self.path)
        file_digest = model_weights.file_sha256(self.path)
        engine = f"llama.cpp (xllamacpp {engine_version()})"
        # the weights and the engine that runs them: a new build may answer differently
        digest = hashlib.sha256(f"{file_digest}\n{engine}".encode()).hexdigest()
        return ModelCard(
            engine=engine,
            served_model=model_weights.NATIVE_MODEL,
            digest=digest,
            size=gguf.file_size,
            details={
                "parent_model": "",
                "format": "gguf",
                "family": gguf.architecture,
                "families": [gguf.architecture],
                "parameter_size": gguf.parameter_size,
                "quantization_level": gguf.quantization,
            },
            model_info={**gguf.model_info(), "aistack.weights_sha256": file_digest},
            context_length=gguf.context_length,
            template=gguf.chat_template,
            modelfile=f"# {model_weights.DESCRIPTION} ({gguf.quantization}) from the "
            f"{model_weights.WEIGHTS_PACKAGE} package, run by {engine}\nFROM {self.path}\n",
            parameters=f"num_ctx {self.default_context}\nstop <|im_end|>",
        )

    def card(self) -> ModelCard:
        return self._card.result()

    # ------------------------------------------------------------------ runners

    def _num_ctx(self, request: GenerationRequest) -> int:
        asked = request.options.get("num_ctx") or self.default_context
        # as Ollama does: never more than the model was trained for
        return max(256, min(int(asked), self.card().context_length))

    def _load(self, num_ctx: int) -> _Runner:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(self.path)
        params.n_ctx = num_ctx * self.parallel  # the KV cache is shared out over the slots
        params.n_parallel = self.parallel
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        params.n_threads_http = 1  # the embedded HTTP listener (loopback) is not used
        params.verbosity = -1
        started = time.perf_counter_ns()
        server = xllamacpp.Server(params)
        log.info("loaded %s with num_ctx %d and %d slots", self.path.name, num_ctx, self.parallel)
        return _Runner(num_ctx=num_ctx, server=server, load_ns=time.perf_counter_ns() - started)

    async def _runner(self, request: GenerationRequest) -> tuple[_Runner, int]:
        """The runner for this request's context length, loading it (and evicting an idle one) if
        needed; also returns the time this request spent waiting for a load, in ns."""
        if not self._card.done():  # the context length is still being read: wait off the loop
            await asyncio.wrap_future(self._card)
        num_ctx = self._num_ctx(request)
        if (runner := self._runners.get(num_ctx)) is not None:
            return runner, 0
        started = time.perf_counter_ns()
        if num_ctx not in self._loading:
            self._loading[num_ctx] = asyncio.ensure_future(self._load_runner(num_ctx))
        try:
            runner = await asyncio.shield(self._loading[num_ctx])
        finally:
            if self._loading.get(num_ctx) is not None and self._loading[num_ctx].done():
                self._loading.pop(num_ctx, None)
        return runner, time.perf_counter_ns() - started

    async def _load_runner(self, num_ctx: int) -> _Runner:
        loop = asyncio.get_running_loop()
        while len(self._runners) >= self.max_loaded:
            idle = [r for r in self._runners.values() if r.active == 0]
            if idle:
                await self._unload(min(idle, key=lambda r: r.last_used))
            else:  # every runner busy: wait for one to finish, as Ollama's scheduler queues
                await asyncio.sleep(0.05)
        runner = await loop.run_in_executor(self._pool, self._load, num_ctx)
        self._runners[num_ctx] = runner
        return runner

    async def _unload(self, runner: _Runner) -> None:
        if self._runners.get(runner.num_ctx) is runner:
            del self._runners[runner.num_ctx]
        # the destructor joins llama.cpp's loop: the last reference is dropped on a pool thread
        holder, runner.server = [runner.server], None
        await asyncio.get_running_loop().run_in_executor(self._pool, holder.clear)
        log.info("unloaded %s (num_ctx %d)", self.path.name, runner.num_ctx)

    def _keep(self, runner: _Runner, request: GenerationRequest) -> None:
        runner.names.add(request.model)
        runner.last_used = time.monotonic()
        runner.expires_at = time.time() + request.keep_alive

    async def load(self, request: GenerationRequest) -> int:
        runner, waited = await self._runner(request)
        self._keep(runner, request)
        if request.keep_alive <= 0 and runner.active == 0:
            await self._unload(runner)
        return waited

    async def reap(self) -> None:
        now = time.time()
        for runner in list(self._runners.values()):
            if runner.active == 0 and runner.expires_at <= now:
                await self._unload(runner)

    def running(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "expires_at": r.expires_at, "context_length": r.num_ctx}
            for r in self._runners.values()
            for name in sorted(r.names)
        ]

    # ------------------------------------------------------------------ generation

    async def generate(self, request: GenerationRequest, on_piece: PieceFn | None = None) -> Generation:
        runner, waited = await self._runner(request)
        runner.active += 1
        try:
            generation = await self._generate(runner, request, on_piece)
            generation.load_ns = waited
            return generation
        finally:
            runner.active -= 1
            self._keep(runner, request)
            if request.keep_alive <= 0 and runner.active == 0:
                await self._unload(runner)

    async def _generate(
        self, runner: _Runner, request: GenerationRequest, on_piece: PieceFn | None
    ) -> Generation:
        loop = asyncio.get_running_loop()
        body = llama_request(request, runner.num_ctx)
        stop = threading.Event()
        pieces: list[str] = []
        state: dict[str, Any] = {"finish": None, "usage": None, "timings": None, "error": None}

        def on_chunk(chunk: dict[str, Any]) -> bool:  # on llama.cpp's thread
            if "error" in chunk:
                state["error"] = chunk["error"]
                return True
            for choice in chunk.get("choices") or []:
                piece = (
                    (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
                )
                if piece:
                    pieces.append(piece)
                    if on_piece is not None:
                        loop.call_soon_threadsafe(on_piece, piece)
                if choice.get("finish_reason"):
                    state["finish"] = choice["finish_reason"]
            state["usage"] = chunk.get("usage") or state["usage"]
            state["timings"] = chunk.get("timings") or state["timings"]
            return stop.is_set()  # True stops the generation (the client went away)

        def run() -> Any:
            server = runner.server
            handler = server.handle_completions if "prompt" in body else server.handle_chat_completions
            try:
                return handler(body, on_chunk)
            except ValueError as exc:  # llama.cpp refused the request (e.g. a bad schema)
                return {"error": {"code": 400, "message": str(exc)}}

        future = loop.run_in_executor(self._pool, run)
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()
            with contextlib.suppress(Exception):
                await future  # the slot is free again within a token
            raise
        error = state["error"] or (result.get("error") if isinstance(result, dict) else None)
        if error:
            raise _engine_error(error, request)
        usage, timings = state["usage"] or {}, state["timings"] or {}
        return Generation(
            content="".join(pieces),
            done_reason="length" if state["finish"] == "length" else "stop",
            prompt_tokens=int(usage.get("prompt_tokens", timings.get("prompt_n", 0))),
            eval_tokens=int(usage.get("completion_tokens", timings.get("predicted_n", 0))),
            prompt_eval_ns=int(float(timings.get("prompt_ms", 0.0)) * 1e6),
            eval_ns=int(float(timings.get("predicted_ms", 0.0)) * 1e6),
        )

    def close(self, grace: float = 10.0) -> None:
        """Unload every runner once its generations are done (at most `grace` seconds), then stop."""
        if self._closed.is_set():
            return
        self._closed.set()
        deadline = time.monotonic() + grace
        while any(r.active for r in self._runners.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._runners.clear()  # the last references: each runner's destructor stops its llama.cpp loop
        self._pool.shutdown(wait=True, cancel_futures=True)


def _engine_error(error: Any, request: GenerationRequest) -> EngineError:
    if isinstance(error, dict):
        message = str(error.get("message") or error)
        code = int(error.get("code") or 500)
        if error.get("type") == "exceed_context_size_error":
            message = (
                f"input length ({error.get('n_prompt_tokens')} tokens) exceeds the context length "
                f"({error.get('n_ctx')} tokens) of {request.model!r}; raise num_ctx or send less"
            )
        if "schema" in message.lower() or "grammar" in message.lower() or "parser" in message.lower():
            return EngineError(
                400, f'invalid format: {message}; expected "json" or a valid JSON Schema object'
            )
        return EngineError(code if 400 <= code < 600 else 500, message)
    return EngineError(500, str(error))
