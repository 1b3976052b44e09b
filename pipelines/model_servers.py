"""Reaching the model servers a stage needs: where each agent's server is, and waiting until it
has the agent's model (pulling it), failing at once when it cannot provide it."""

from __future__ import annotations

import json
import os
import sys
import time

import httpx
import ollama

from aistack.steps.model_names import names_model


def ollama_host() -> str:
    """`OLLAMA_HOST` as a URL (Ollama accepts a bare host:port), default 127.0.0.1:11434."""
    host = os.environ.get("OLLAMA_HOST", "http://127.0.0.1:11434")
    return host if "://" in host else f"http://{host}"


class ModelUnavailableError(RuntimeError):
    """The model server cannot provide a model the stage needs (it said so): no retry helps."""


class ModelServerUnreachableError(RuntimeError):
    """The model server could not be reached while pulling: a retry of the step may succeed."""


def agent_hosts() -> dict[str, str]:
    """`AISTACK_AGENT_HOSTS`: JSON {agent: model server URL}, set by the compiled stage template (each
    agent's sidecar or Service) or by the local runner; agents not named use OLLAMA_HOST."""
    raw = os.environ.get("AISTACK_AGENT_HOSTS") or "{}"
    try:
        hosts = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"AISTACK_AGENT_HOSTS is not JSON: {exc}") from None
    if not isinstance(hosts, dict) or not all(isinstance(v, str) for v in hosts.values()):
        raise ValueError("AISTACK_AGENT_HOSTS must be a JSON object of agent name -> URL")
    return hosts


def _log(message: str) -> None:
    # stdout is the step's result (Argo's outputs.result): progress goes to stderr
    print(message, file=sys.stderr, flush=True)


def wait_for_model(host: str, model: str, timeout: float = 900.0) -> None:
    """Wait for the model server at `host` to answer (a sidecar may still be starting), then make sure
    it has `model`: listed, or pulled now with its progress logged. A pull that fails (a model the
    server cannot provide) fails the step at once, with the server's reason."""
    deadline = time.monotonic() + timeout
    client = ollama.Client(host=host, timeout=30)

    def listed() -> bool:
        return any(names_model(m.model, model) for m in client.list().models)

    while True:
        try:
            if listed():
                return
            break
        except (ConnectionError, httpx.HTTPError, ollama.ResponseError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the model server at {host} did not answer within {timeout:.0f}s ({exc})"
                ) from exc
            time.sleep(1.0)
    _log(f"pulling {model} at {host}")
    last_report = 0.0
    try:
        for progress in ollama.Client(host=host, timeout=max(30.0, deadline - time.monotonic())).pull(
            model, stream=True
        ):
            if progress.total and time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                _log(f"  {progress.status}: {100 * (progress.completed or 0) // progress.total}%")
    except ollama.ResponseError as exc:
        raise ModelUnavailableError(
            f"the model server at {host} cannot provide {model!r}: {exc.error}"
        ) from None
    except (ConnectionError, httpx.HTTPError) as exc:  # the network, not a refusal: a retry may get through
        raise ModelServerUnreachableError(f"pulling {model!r} at {host} failed: {exc}") from exc
    if not listed():
        raise ModelUnavailableError(f"the model server at {host} pulled {model!r} but does not list it")
