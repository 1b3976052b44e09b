"""What the embedded model server asks of an engine, and what an engine answers.

The server (steps.model_server) speaks Ollama's REST API; an engine generates text. Two engines
implement this: `llama_engine.LlamaEngine` (a real LLM through llama.cpp) and
`extractive.ExtractiveEngine` (deterministic, no weights, for tests that need exact outputs).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# Ollama's defaults (api/types.go DefaultOptions): what a request gets for options it leaves out
OLLAMA_DEFAULT_OPTIONS: dict[str, Any] = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "repeat_penalty": 1.1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": -1,
    "num_predict": -1,
}
# the options this server understands, with their types (Ollama rejects a wrongly typed one)
OPTION_TYPES: dict[str, type | tuple[type, ...]] = {
    "temperature": (int, float),
    "top_k": int,
    "top_p": (int, float),
    "min_p": (int, float),
    "typical_p": (int, float),
    "repeat_last_n": int,
    "repeat_penalty": (int, float),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "seed": int,
    "num_predict": int,
    "num_ctx": int,
    "stop": list,
    "num_keep": int,
    "num_batch": int,
    "num_thread": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
}


class EngineError(Exception):
    """A request the engine refuses, with the HTTP status Ollama gives such a request."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_options(options: Any) -> dict[str, Any]:
    """The request's options, type-checked as Ollama does; unknown keys are ignored (Ollama
    logs "invalid option provided" and goes on)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise EngineError(400, "options must be an object")
    checked: dict[str, Any] = {}
    for key, value in options.items():
        kind = OPTION_TYPES.get(key)
        if kind is None:
            continue
        if isinstance(value, bool) and kind is not bool:
            raise EngineError(400, f"option {key!r} must be of type {_type_name(kind)}")
        if not isinstance(value, kind):
            raise EngineError(400, f"option {key!r} must be of type {_type_name(kind)}")
        if key == "stop" and not all(isinstance(s, str) for s in value):
            raise EngineError(400, "option 'stop' must be a list of strings")
        checked[key] = value
    return checked


def _type_name(kind: type | tuple[type, ...]) -> str:
    if kind == (int, float):
        return "number"
    return {int: "integer", bool: "boolean", list: "array"}.get(kind, str(kind))  # type: ignore[call-overload]


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: Any, default: float) -> float:
    """Ollama's keep_alive: a Go duration ("5m", "1h30m"), a number of seconds, negative = forever
    (returned as inf), 0 = unload after the request."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise EngineError(400, "keep_alive must be a duration or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        negative = text.startswith("-")
        body = text.lstrip("-")
        try:
            seconds = float(body)
        except ValueError:
            parts = _DURATION.findall(body)
            if not parts or "".join(n + u for n, u in parts) != body:
                raise EngineError(400, f"invalid duration for keep_alive: {text!r}") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
        seconds = -seconds if negative else seconds
    return float("inf") if seconds < 0 else seconds


@dataclass
class GenerationRequest:
    """One /api/chat or /api/generate request, as the server hands it to an engine."""

    model: str  # the name asked for
    messages: list[dict[str, str]]  # chat messages (generate: system + user prompt)
    options: dict[str, Any] = field(default_factory=dict)
    format: Any = None  # None, "json" or a JSON schema
    raw_prompt: str | None = None  # /api/generate with raw: true (no template)
    keep_alive: float = 300.0  # seconds the model stays loaded after this request (inf: forever)

    @property
    def empty(self) -> bool:
        """No prompt at all: Ollama only loads (or unloads) the model."""
        if self.raw_prompt is not None:
            return not self.raw_prompt
        return not any(str(m.get("content") or "").strip() for m in self.messages)


@dataclass
class Generation:
    content: str
    done_reason: str  # stop | length
    prompt_tokens: int
    eval_tokens: int
    load_ns: int = 0
    prompt_eval_ns: int = 0
    eval_ns: int = 0


@dataclass(frozen=True)
class ModelCard:
    """What /api/tags and /api/show say about the model an engine runs."""

    engine: str  # e.g. "llama.cpp (xllamacpp 2026.10.11549)"
    served_model: str  # the model that really answers, e.g. "smollm2:135m"
    digest: str  # sha256 hex
    size: int
    details: dict[str, Any]
    model_info: dict[str, Any]
    context_length: int  # trained context, as Ollama's model_info reports it
    template: str
    modelfile: str
    parameters: str
    capabilities: tuple[str, ...] = ("completion",)


PieceFn = Callable[[str], None]


class Engine(Protocol):
    """A text generator behind the Ollama API."""

    name: str  # short: "llama.cpp" or "aistack-extractive"

    def card(self) -> ModelCard:
        """The model's card (may block briefly the first time: call it off the event loop)."""
        ...

    async def generate(self, request: GenerationRequest, on_piece: PieceFn | None = None) -> Generation:
        """Generate an answer; `on_piece` gets the text as it is produced (on the event loop).
        The model then stays loaded for the request's keep_alive."""
        ...

    async def load(self, request: GenerationRequest) -> int:
        """An empty request: load the model (or unload it, with keep_alive 0); the load time in ns."""
        ...

    def running(self) -> list[dict[str, Any]]:
        """Loaded models for /api/ps: {name, expires_at (epoch s or inf), context_length}."""
        ...

    async def reap(self) -> None:
        """Unload models whose keep-alive has expired."""
        ...

    def close(self) -> None: ...
