"""A fuzz pass over the gateway's published OpenAPI schema (schemathesis generates the requests
from it): whatever a client sends, authenticated or not, the gateway answers 2xx or 4xx, as JSON
(or NDJSON when streaming), and never 5xx."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from test_gateway import AUTH, make_app

from aistack.steps.model_server import EmbeddedModelServer

# real agents for the path parameters, so that generated bodies reach the model calls
KNOWN_PATHS = {
    "POST /v1/agents/{agent}/{endpoint}": {"agent": "qna-agent", "endpoint": "answer"},
    "POST /{endpoint}": {"endpoint": "summarize"},
}


def fuzzer(operation: Any, seen: dict[str, set[int]], known: bool = False) -> Callable[[], None]:
    key = f"{operation.method.upper()} {operation.path}"

    @given(case=operation.as_strategy())
    @settings(
        max_examples=30,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case) -> None:
        if known:
            case.path_parameters = dict(KNOWN_PATHS[key])
            key_seen = f"{key} (known)"
        else:
            key_seen = key
        for headers in (AUTH, {}):
            response = case.call(headers=headers)
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:500]}"
            content_type = response.headers["content-type"][0]
            assert content_type.startswith(("application/json", "application/x-ndjson", "text/plain")), where
            seen.setdefault(key_seen, set()).add(response.status_code)

    return fuzz


def test_no_server_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = EmbeddedModelServer(models=["aistack-extractive"], parallel=4)
    monkeypatch.setenv("OLLAMA_HOST", server.start())
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", make_app(tmp_path))
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {f"{o.method.upper()} {o.path}" for o in operations} >= {
            "POST /v1/tasks", "GET /v1/tasks", "GET /v1/tasks/{name}", "DELETE /v1/tasks/{name}",
            "GET /v1/agents", "POST /v1/agents/{agent}/{endpoint}", "POST /{endpoint}",
        }  # fmt: skip
        seen: dict[str, set[int]] = {}
        for operation in operations:
            fuzzer(operation, seen)()
            if f"{operation.method.upper()} {operation.path}" in KNOWN_PATHS:
                fuzzer(operation, seen, known=True)()
        # the pass reached the handlers, not only the auth and validation layers
        assert 200 in seen["POST /v1/agents/{agent}/{endpoint} (known)"], seen
        assert 200 in seen["POST /{endpoint} (known)"], seen
        assert {401, 422} <= set().union(*seen.values()), seen
    finally:
        server.stop()
