"""The one way aistack calls a model: the official `ollama.AsyncClient`, with bounded
concurrency, timeouts, retries and a result cache.

- Retries: exponential backoff with full jitter on connection errors, timeouts, dropped
  connections, 429, 5xx and in-stream errors; never on other 4xx (an unknown model is a clear
  error naming the model and the host).
- Cache: keyed by (model digest from the server, prompt hash, options, input hash). A hit
  makes no call; identical calls in flight share one request; a changed digest misses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import ollama

from aistack.etl.schemas import content_hash
from aistack.steps.model_names import full_name, names_model
from aistack.steps.result_cache import ResultCache, Segment

RETRYABLE_STATUS = frozenset({-1, 408, 429, 500, 502, 503, 504})


def concurrency_for(num_parallel: int) -> int:
    """Requests kept in flight for a server with `num_parallel` slots: one more than the slots,
    so a request is already queued at the server whenever a slot frees (hides the round trip)."""
    return max(1, num_parallel) + 1


class ModelCallError(Exception):
    """A call that cannot succeed (bad request, unknown model) or ran out of retries."""

    def __init__(self, message: str, *, retryable: bool = False, attempts: int = 1) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base_seconds: float = 0.2
    max_seconds: float = 10.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter exponential backoff for the given 1-based failed attempt."""
        return rng.uniform(0, min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1)))


@dataclass
class CallResult:
    content: str
    prompt_tokens: int = 0
    eval_tokens: int = 0
    total_duration_ns: int = 0
    load_duration_ns: int = 0
    prompt_eval_duration_ns: int = 0
    eval_duration_ns: int = 0
    done_reason: str = ""
    attempts: int = 1
    cached: bool = False

    def entry(self) -> dict[str, Any]:
        """What the cache keeps of it."""
        return {k: v for k, v in self.__dict__.items() if k not in ("attempts", "cached")}

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> CallResult:
        return cls(**entry, attempts=0, cached=True)


@dataclass(frozen=True)
class ModelInfo:
    """A model as the server reports it, and who really answers for it."""

    name: str
    digest: str  # of the model that answers: part of every cache key
    context_length: int | None  # trained context (Ollama's model_info), not the server's num_ctx
    served_model: str = ""  # the model that answers: the name itself, or what stands in for it
    engine: str = ""  # e.g. "ollama 0.12.6" or "llama.cpp (xllamacpp 2026.10.11549)"
    stand_in: bool = False


def cache_key(digest: str, prompt_hash: str, options: dict[str, Any], input_hash: str, fmt: Any) -> str:
    """What a cached answer stands for: the model that answers, the prompt, options, input, format."""
    return content_hash(
        digest, prompt_hash, json.dumps(options, sort_keys=True), input_hash, json.dumps(fmt, sort_keys=True)
    )


@dataclass
class ModelClient:
    """Calls one Ollama host. Thread-affine: create it inside the event loop that uses it."""

    host: str
    concurrency: int = 4
    timeout: float = 600.0  # must exceed a cold model load (ollama/ollama#7408)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    cache: ResultCache | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self._client = ollama.AsyncClient(host=self.host, timeout=self.timeout)
        self._slots = asyncio.Semaphore(self.concurrency)
        self._rng = random.Random(self.seed)
        self._inflight: dict[str, asyncio.Future[CallResult]] = {}
        self._models: dict[str, ModelInfo] = {}
        self._segment: Segment | None = None
        self.stats: Counter[str] = Counter()

    async def close(self) -> None:
        if self._segment is not None:  # calls made outside any part's segment
            await asyncio.to_thread(self._segment.save)
            self._segment = None
        await self._client._client.aclose()

    @contextlib.asynccontextmanager
    async def segment(self, scope: str, index: int) -> AsyncIterator[None]:
        """Calls made inside look their answers up in (and add them to) this cache segment: one read
        before, one write after, however many calls."""
        if self.cache is None:
            yield
            return
        previous = self._segment
        self._segment = await asyncio.to_thread(self.cache.segment, scope, index)
        try:
            yield
        finally:
            segment, self._segment = self._segment, previous
            await asyncio.to_thread(segment.save)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, ollama.ResponseError):
            return f"HTTP {exc.status_code}: {exc.error}"
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    @staticmethod
    def _retryable(exc: BaseException) -> bool:
        if isinstance(exc, ollama.ResponseError):
            return exc.status_code in RETRYABLE_STATUS
        return isinstance(exc, ConnectionError | httpx.TransportError | asyncio.TimeoutError)

    async def _with_retries(self, what: str, call: Any) -> tuple[Any, int]:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call(), attempt
            except Exception as exc:
                if not self._retryable(exc):
                    raise ModelCallError(
                        f"{what} at {self.host} failed: {self._describe(exc)}", attempts=attempt
                    ) from exc
                self.stats["retries"] += 1
                if attempt >= self.retry.attempts:
                    raise ModelCallError(
                        f"{what} at {self.host} failed after {attempt} attempts: {self._describe(exc)}",
                        retryable=True,
                        attempts=attempt,
                    ) from exc
                await asyncio.sleep(self.retry.delay(attempt, self._rng))

    async def model_info(self, model: str) -> ModelInfo:
        """Digest (for the cache key) and context length (for chunk sizing) of a model."""
        if model in self._models:
            return self._models[model]
        listing, _ = await self._with_retries("listing models", self._client.list)
        entry = next((m for m in listing.models if names_model(m.model, model)), None)
        if entry is None:
            names = ", ".join(sorted(m.model or "" for m in listing.models)) or "none"
            raise ModelCallError(
                f"model {model!r} is not available at {self.host} (it has: {names}); pull it first"
            )
        show, _ = await self._with_retries(f"showing model {model!r}", lambda: self._client.show(model))
        model_info = dict(show.modelinfo or {})
        context = None
        for key, value in model_info.items():
            if key.endswith(".context_length") and isinstance(value, int):
                context = value
        # aistack's embedded server says what really answers; a real Ollama is what it says it is
        engine = model_info.get("aistack.engine") or f"ollama {await self._server_version()}"
        info = ModelInfo(
            model,
            entry.digest or "",
            context,
            served_model=str(model_info.get("aistack.served_by") or entry.model or full_name(model)),
            engine=str(engine),
            stand_in=bool(model_info.get("aistack.stand_in", False)),
        )
        self._models[model] = info
        return info

    async def _server_version(self) -> str:
        """`/api/version` (the official client has no method for it: same httpx client, same host)."""

        async def get() -> str:
            response = await self._client._client.get("/api/version")
            response.raise_for_status()
            return str(response.json().get("version", "unknown"))

        try:
            version, _ = await self._with_retries("asking the server's version", get)
        except ModelCallError:
            return "unknown"
        return str(version)

    async def chat(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        options: dict[str, Any] | None = None,
        fmt: Any = None,
        keep_alive: str | None = None,
        prompt_hash: str = "",
        input_hash: str = "",
    ) -> CallResult:
        """One chat call through the cache; retried; concurrent identical calls are merged."""
        options = options or {}
        key = None
        segment: Segment | None = None
        if self.cache is not None:
            info = await self.model_info(model)
            key = cache_key(
                info.digest, prompt_hash, options, input_hash or content_hash(json.dumps(messages)), fmt
            )
            if self._segment is None:  # a call outside any part: one segment for the client's lifetime
                self._segment = await asyncio.to_thread(self.cache.segment, "calls", 0)
            segment = self._segment
            if (hit := segment.get(key)) is not None:
                self.stats["cache_hits"] += 1
                return CallResult.from_entry(hit)
            if key in self._inflight:
                self.stats["merged"] += 1
                return await asyncio.shield(self._inflight[key])
            future: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()
            self._inflight[key] = future
        try:
            result = await self._call(model, messages, options, fmt, keep_alive)
            if key is not None and segment is not None:
                segment.put(key, result.entry())
                future.set_result(result)
            return result
        except BaseException as exc:
            if key is not None:
                future.set_exception(exc)
                future.exception()  # retrieved: merged waiters re-raise it, nobody else must
            raise
        finally:
            if key is not None:
                self._inflight.pop(key, None)

    async def _call(
        self,
        model: str,
        messages: list[dict[str, str]],
        options: dict[str, Any],
        fmt: Any,
        keep_alive: str | None,
    ) -> CallResult:
        async def once() -> Any:
            async with self._slots:
                self.stats["requests"] += 1
                return await self._client.chat(
                    model=model,
                    messages=messages,
                    options=options or None,
                    format=fmt,
                    keep_alive=keep_alive,
                    stream=False,
                )

        response, attempts = await self._with_retries(f"model {model!r}", once)
        self.stats["calls"] += 1
        return CallResult(
            content=response.message.content or "",
            prompt_tokens=response.prompt_eval_count or 0,
            eval_tokens=response.eval_count or 0,
            total_duration_ns=response.total_duration or 0,
            load_duration_ns=response.load_duration or 0,
            prompt_eval_duration_ns=response.prompt_eval_duration or 0,
            eval_duration_ns=response.eval_duration or 0,
            done_reason=response.done_reason or "",
            attempts=attempts,
        )

    async def chat_stream(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        options: dict[str, Any] | None = None,
        keep_alive: str | None = None,
    ) -> AsyncIterator[str]:
        """A streamed chat call: yields the answer's pieces as the model produces them. Opening the
        stream is retried like any call; once text has been sent, an error is raised, not retried
        (the caller already has part of the answer)."""

        async def open_stream() -> tuple[Any, Any]:
            self.stats["requests"] += 1  # per attempt, as for chat()
            stream = await self._client.chat(
                model=model, messages=messages, options=options or None, keep_alive=keep_alive, stream=True
            )
            iterator = stream.__aiter__()
            first = await iterator.__anext__()  # errors before any text surface here, and are retried
            return iterator, first

        async with self._slots:
            (iterator, first), _ = await self._with_retries(f"model {model!r}", open_stream)
            self.stats["calls"] += 1
            part = first
            while True:
                if part.message.content:
                    yield part.message.content
                if part.done:
                    return
                try:
                    part = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    raise ModelCallError(
                        f"model {model!r} at {self.host}: stream broken: {self._describe(exc)}"
                    ) from exc
