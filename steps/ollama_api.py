"""Ollama's request and response bodies for /api/chat and /api/generate: what a request may ask of
the embedded engines (checked as Ollama checks it), and the objects a response is made of."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from aistack.steps.engine_api import (
    EngineError,
    Generation,
    GenerationRequest,
    check_options,
    keep_alive_seconds,
)


def generation_request(
    body: dict[str, Any], name: str, chat: bool, default_keep_alive: float
) -> GenerationRequest:
    """Ollama's /api/chat or /api/generate request checked as Ollama checks it, for an engine;
    EngineError (with Ollama's status) if refused."""
    fmt = body.get("format")
    if fmt not in (None, "", "json") and not isinstance(fmt, dict):
        raise EngineError(
            400, f'invalid format: {json.dumps(fmt)}; expected "json" or a valid JSON Schema object'
        )
    if body.get("think"):
        raise EngineError(400, f'"{name}" does not support thinking')
    raw_prompt = None
    if chat:
        messages = body.get("messages")
        if messages is not None and not isinstance(messages, list):
            raise EngineError(400, "messages must be a list")
        messages = messages or []
        if body.get("tools"):
            raise EngineError(400, f'"{name}" does not support tools')
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
                raise EngineError(400, "each message needs a role: system, user, assistant or tool")
            if m.get("images"):
                raise EngineError(400, f'"{name}" does not support images')
    else:
        if body.get("images"):
            raise EngineError(400, f'"{name}" does not support images')
        if body.get("suffix"):
            raise EngineError(400, f'"{name}" does not support insert')
        if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
            raise EngineError(400, "raw mode does not support template, system, or context")
        if body.get("template"):
            raise EngineError(400, "the embedded engines do not support template overrides")
        prompt, system = str(body.get("prompt") or ""), str(body.get("system") or "")
        if body.get("raw"):
            raw_prompt, messages = prompt, []
        else:
            messages = [*([{"role": "system", "content": system}] if system else []),
                        *([{"role": "user", "content": prompt}] if prompt else [])]  # fmt: skip
    return GenerationRequest(
        model=name,
        messages=messages,
        options=check_options(body.get("options")),
        format=fmt or None,
        raw_prompt=raw_prompt,
        keep_alive=keep_alive_seconds(body.get("keep_alive"), default_keep_alive),
    )


def part(name: str, chat: bool, text: str, done: bool) -> dict[str, Any]:
    """One response object: chat carries a message, generate a response string."""
    created = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    out: dict[str, Any] = {"model": name, "created_at": created, "done": done}
    if chat:
        out["message"] = {"role": "assistant", "content": text}
    else:
        out["response"] = text
    return out


def final(name: str, chat: bool, generation: Generation, started: int, content: str = "") -> dict[str, Any]:
    """The last response object, with the generation's counts and durations (ns since `started`)."""
    out = part(name, chat, content, done=True)
    out.update(
        {
            "done_reason": generation.done_reason,
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": generation.load_ns,
            "prompt_eval_count": generation.prompt_tokens,
            "prompt_eval_duration": generation.prompt_eval_ns,
            "eval_count": generation.eval_tokens,
            "eval_duration": generation.eval_ns,
        }
    )
    return out
