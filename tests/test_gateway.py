"""The gateway over HTTP: tasks submitted and followed, agent endpoints answering through the
embedded model server (official ollama client inside), auth, limits, metrics, restarts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import uvicorn
from conftest import ROOT, free_port
from fastapi import FastAPI
from fastapi.testclient import TestClient

from aistack.gateway.server import build_app
from aistack.gateway.settings import GatewaySettings
from aistack.gateway.tasks import LocalTasks
from aistack.steps.model_server import EmbeddedModelServer, Faults

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QNA_AGENTS = ROOT / "tests" / "data" / "extractive-agents.yaml"
CONTEXT = (
    "Lists are mutable sequences. Tuples are immutable sequences, typically used to store collections of "
    "heterogeneous data. A list comprehension consists of brackets containing an expression followed by a for "
    "clause, then zero or more for or if clauses."
)
TASK = {
    "metadata": {"name": "tuples"},
    "spec": {
        "inputText": CONTEXT,
        "question": "What are tuples?",
        "pipeline": [
            {"agentRef": "qna-agent", "mode": "map"},
            {"agentRef": "qna-agent", "name": "combine", "mode": "reduce"},
        ],
        "outputTarget": "s3://ignored-in-local-mode/out/",
    },
}


@pytest.fixture
def model_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedModelServer]:
    server = EmbeddedModelServer(models=["aistack-extractive"], parallel=4)
    monkeypatch.setenv("OLLAMA_HOST", server.start())
    yield server
    server.stop()


def make_app(
    tmp: Path,
    token: str | None = TOKEN,
    agents: tuple[Path, ...] = (QNA_AGENTS,),
    out: str | None = None,
    **settings_: Any,
) -> FastAPI:
    settings = GatewaySettings(
        token=token,
        agent_files=agents,
        out=out or (tmp / "out").as_uri(),
        state_dir=tmp / "state",
        **settings_,
    )
    app, _ = build_app(settings)
    return app


@pytest.fixture
def client(tmp_path: Path, model_server: EmbeddedModelServer) -> Iterator[TestClient]:
    with TestClient(make_app(tmp_path), raise_server_exceptions=False) as c:
        yield c


def wait_for(c: Any, name: str, headers: dict[str, str] = AUTH, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = c.get(f"/v1/tasks/{name}", headers=headers).json()["status"]
        if status["phase"] in ("Succeeded", "Failed"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"task {name} did not finish: {status}")


class Served:
    """The app under uvicorn on 127.0.0.1 (a free port), on a thread; stopped on exit."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_a_task_is_submitted_and_followed_over_http(
    tmp_path: Path, model_server: EmbeddedModelServer
) -> None:
    with (
        Served(make_app(tmp_path)) as served,
        httpx.Client(base_url=served.url, headers=AUTH, timeout=30) as http,
    ):
        created = http.post("/v1/tasks", json=TASK)
        assert created.status_code == 201, created.text
        body = created.json()
        assert (body["name"], body["namespace"]) == ("tuples", "default")
        assert created.headers["location"] == body["statusUrl"] == "/v1/tasks/tuples?namespace=default"
        assert body["task"]["metadata"]["annotations"]["ai.stack/submitted-by"] == "gateway-token"
        # the CRD's defaults were applied, as the API server would
        assert body["task"]["spec"]["chunking"]["maxTokens"] == 512
        status = wait_for(http, "tuples")
        assert status["phase"] == "Succeeded", status
        assert status["conditions"][0]["type"] == "Succeeded"
        assert status["tokens"]["prompt"] > 0 and status["tokens"]["eval"] > 0
        assert "immutable" in status["outputs"]["results"][0]
        results = pq.read_table(
            Path(status["outputs"]["uri"].removeprefix("file://")) / "results"
        ).to_pylist()
        assert {r["stage"] for r in results} == {"qna-agent", "combine"}
        assert [t["metadata"]["name"] for t in http.get("/v1/tasks").json()["items"]] == ["tuples"]
        # an agent streamed over a real socket: pieces arrive as NDJSON lines, then done
        with http.stream("POST", "/summarize", json={"text": CONTEXT, "stream": True}) as streamed:
            lines = [json.loads(line) for line in streamed.iter_lines() if line]
        assert streamed.status_code == 200 and lines[-1]["done"] is True and len(lines) > 3
        assert http.delete("/v1/tasks/tuples").status_code == 200
        gone = http.get("/v1/tasks/tuples")
        assert gone.status_code == 404 and gone.json()["reason"] == "NotFound"


def test_task_errors_name_what_is_wrong(client: TestClient) -> None:
    bad = json.loads(json.dumps(TASK))
    bad["spec"]["pipeline"][0]["mode"] = "explode"
    r = client.post("/v1/tasks", json=bad, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["details"] == [
        "spec.pipeline[0].mode: Unsupported value 'explode': supported values: ['map', 'reduce', 'chat']"
    ]
    cel = json.loads(json.dumps(TASK))
    cel["spec"]["chunking"] = {"maxTokens": 100, "overlapTokens": 200}  # a CEL rule of the CRD
    r = client.post("/v1/tasks", json=cel, headers=AUTH)
    assert r.status_code == 422 and r.json()["details"][0].startswith("spec.chunking"), r.json()
    unknown = json.loads(json.dumps(TASK))
    unknown["spec"]["pipeline"] = [{"agentRef": "nobody", "mode": "map"}]
    r = client.post("/v1/tasks", json=unknown, headers=AUTH)
    assert r.status_code == 422 and "undefined OllamaAgents: nobody" in r.json()["message"]
    r = client.post("/v1/tasks", json={**TASK, "kind": "Workflow"}, headers=AUTH)
    assert r.status_code == 422 and "kind must be 'TaskOrchestration'" in r.json()["message"]
    r = client.post(
        "/v1/tasks", json={"spec": TASK["spec"], "metadata": {"name": "Not_A_Name"}}, headers=AUTH
    )
    assert r.status_code == 422 and r.json()["details"][0].startswith("metadata.name: ")
    assert client.post("/v1/tasks", json=TASK, headers=AUTH).status_code == 201
    again = client.post("/v1/tasks", json=TASK, headers=AUTH)
    assert again.status_code == 409 and again.json()["reason"] == "AlreadyExists"
    generated = client.post(
        "/v1/tasks", json={"spec": TASK["spec"], "metadata": {"generateName": "qa-"}}, headers=AUTH
    )
    assert generated.status_code == 201 and generated.json()["name"].startswith("qa-")
    assert (
        client.post(
            "/v1/tasks", content=b"{not json", headers={**AUTH, "content-type": "application/json"}
        ).status_code
        == 422
    )
    wait_for(client, "tuples")


def test_auth_with_a_token(client: TestClient) -> None:
    for method, path, body in [
        ("post", "/v1/tasks", TASK),
        ("get", "/v1/tasks", None),
        ("post", "/summarize", {"text": CONTEXT}),
    ]:
        r = client.request(method, path, json=body)
        assert r.status_code == 401, (method, path)
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = client.request(method, path, json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["message"] == "invalid bearer token"
    r = client.get("/v1/tasks", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert r.status_code == 401 and "Bearer" in r.json()["message"]
    assert client.get("/v1/tasks").json()["code"] == 401
    # health, metrics and the OpenAPI schema stay open (probes and scrapers carry no token)
    assert client.get("/healthz").status_code == client.get("/metrics").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "aistack gateway"


def test_without_a_token_reads_are_open_and_writes_refused(
    tmp_path: Path, model_server: EmbeddedModelServer
) -> None:
    with TestClient(make_app(tmp_path, token=None)) as c:
        assert c.get("/v1/tasks").json() == {"items": []}
        assert c.get("/v1/agents").status_code == 200
        for path, body in [
            ("/v1/tasks", TASK),
            ("/summarize", {"text": CONTEXT}),
            ("/v1/agents/qna-agent/answer", {"text": CONTEXT}),
        ]:
            r = c.post(path, json=body)
            assert r.status_code == 401 and "anonymous writes are refused" in r.json()["message"]
        assert c.delete("/v1/tasks/anything").status_code == 401
        assert c.get("/v1/tasks").json() == {"items": []}, "nothing was created"


def test_agent_endpoints_answer_through_the_model_server(client: TestClient) -> None:
    listed = client.get("/v1/agents", headers=AUTH).json()["items"]
    assert {(a["name"], a["endpoint"], a["url"]) for a in listed} == {
        ("qna-agent", "/answer", "/v1/agents/qna-agent/answer"),
        ("summarizer-agent", "/summarize", "/v1/agents/summarizer-agent/summarize"),
    }
    qna = client.post(
        "/v1/agents/qna-agent/answer", json={"text": CONTEXT, "question": "What are tuples?"}, headers=AUTH
    )
    assert qna.status_code == 200, qna.text
    answer = qna.json()
    assert answer["agent"] == "qna-agent" and answer["role"] == "qna" and "immutable" in answer["response"]
    assert answer["promptTokens"] > 0 and answer["evalTokens"] > 0
    bare = client.post("/answer", json={"text": CONTEXT, "question": "What are tuples?"}, headers=AUTH).json()
    assert bare["response"] == answer["response"]
    summary = client.post("/summarize", json={"text": CONTEXT}, headers=AUTH)
    assert summary.status_code == 200 and summary.json()["agent"] == "summarizer-agent"
    assert (
        client.post("/v1/agents/qna-agent/summarize", json={"text": CONTEXT}, headers=AUTH).status_code == 404
    )
    assert client.post("/v1/agents/ghost/answer", json={"text": CONTEXT}, headers=AUTH).status_code == 404
    missing = client.post("/translate", json={"text": CONTEXT}, headers=AUTH)
    assert missing.status_code == 404 and "GET /v1/agents" in missing.json()["message"]
    empty = client.post("/summarize", json={"text": ""}, headers=AUTH)
    assert empty.status_code == 422 and empty.json()["details"][0].startswith("text: ")
    extra = client.post("/summarize", json={"text": CONTEXT, "temperature": 3}, headers=AUTH)
    assert extra.status_code == 422


def test_streaming_gives_the_same_answer(client: TestClient) -> None:
    whole = client.post("/summarize", json={"text": CONTEXT}, headers=AUTH).json()["response"]
    with client.stream("POST", "/summarize", json={"text": CONTEXT, "stream": True}, headers=AUTH) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and lines[-1]["agent"] == "summarizer-agent"
    assert "".join(line.get("response", "") for line in lines[:-1]).strip() == whole
    assert len(lines) > 3, "the answer arrives in pieces"


def test_roles_with_json_contracts(tmp_path: Path, model_server: EmbeddedModelServer) -> None:
    agents = tmp_path / "agents.yaml"
    agents.write_text(
        "apiVersion: ai.stack/v1alpha1\nkind: OllamaAgent\nmetadata: {name: triage}\n"
        "spec: {model: aistack-extractive, role: classifier, endpoint: /classify, contextTokens: 256}\n"
        "---\napiVersion: ai.stack/v1alpha1\nkind: OllamaAgent\nmetadata: {name: second-summarizer}\n"
        "spec: {model: aistack-extractive, role: summarizer, endpoint: /answer}\n"
    )
    with TestClient(make_app(tmp_path, agents=(QNA_AGENTS, agents))) as c:
        r = c.post(
            "/classify",
            json={"text": "The list sort method sorts in place.", "labels": ["lists", "networking"]},
            headers=AUTH,
        )
        assert r.status_code == 200, r.text
        assert r.json()["response"]["label"] in {"lists", "networking"} and r.json()["response"]["reason"]
        assert (
            c.post("/classify", json={"text": "x"}, headers=AUTH)
            .json()["message"]
            .endswith("send labels (two or more)")
        )
        stream = c.post("/classify", json={"text": "x", "labels": ["a", "b"], "stream": True}, headers=AUTH)
        assert stream.status_code == 422 and "streaming is for free-text roles" in stream.json()["message"]
        big = c.post("/classify", json={"text": CONTEXT * 20, "labels": ["a", "b"]}, headers=AUTH)
        assert big.status_code == 413 and "submit a task to chunk it" in big.json()["message"]
        # two agents on /answer: the bare form is ambiguous, the named form is not
        ambiguous = c.post("/answer", json={"text": CONTEXT}, headers=AUTH)
        assert ambiguous.status_code == 409 and "qna-agent, second-summarizer" in ambiguous.json()["message"]
        assert (
            c.post("/v1/agents/second-summarizer/answer", json={"text": CONTEXT}, headers=AUTH).status_code
            == 200
        )


def test_model_server_faults_are_retried_or_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flaky = EmbeddedModelServer(models=["aistack-extractive"], faults=Faults(error_rate=0.5, seed=3))
    host = flaky.start()
    monkeypatch.setenv("OLLAMA_HOST", host)
    try:
        with TestClient(make_app(tmp_path)) as c:
            answers = [
                c.post("/summarize", json={"text": f"{CONTEXT} Case {i}."}, headers=AUTH) for i in range(6)
            ]
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
            assert sum(a.json()["attempts"] for a in answers) > 6, "503/500 answers were retried"
            # the server goes away: the call fails after its retries, naming the server
            flaky.stop()
            r = c.post("/summarize", json={"text": f"{CONTEXT} Once more."}, headers=AUTH)
            assert r.status_code == 502 and host.removeprefix("http://") in r.json()["message"], r.json()
    finally:
        flaky.stop()


def test_slow_agents_time_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = EmbeddedModelServer(models=["aistack-extractive"], faults=Faults(latency=3.0))
    monkeypatch.setenv("OLLAMA_HOST", slow.start())
    try:
        with TestClient(make_app(tmp_path, request_timeout=0.5)) as c:
            r = c.post("/summarize", json={"text": CONTEXT}, headers=AUTH)
            assert r.status_code == 504 and "did not answer within 0.5s" in r.json()["message"]
    finally:
        slow.stop()


def test_request_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = EmbeddedModelServer(models=["aistack-extractive"], faults=Faults(latency=1.0))
    monkeypatch.setenv("OLLAMA_HOST", slow.start())
    try:
        with Served(make_app(tmp_path, max_body_bytes=2000, client_concurrency=1)) as served:
            big = {"text": "x" * 5000}
            r = httpx.post(f"{served.url}/summarize", json=big, headers=AUTH)
            assert r.status_code == 413 and r.json()["reason"] == "RequestEntityTooLarge"

            def chunks() -> Iterator[bytes]:  # no Content-Length: the body is counted as it arrives
                yield b'{"text": "'
                for _ in range(10):
                    yield b"y" * 500
                yield b'"}'

            r = httpx.post(
                f"{served.url}/summarize",
                content=chunks(),
                headers={**AUTH, "content-type": "application/json"},
            )
            assert r.status_code == 413
            with ThreadPoolExecutor(2) as pool:
                first = pool.submit(
                    httpx.post, f"{served.url}/summarize", json={"text": CONTEXT}, headers=AUTH, timeout=30
                )
                time.sleep(0.3)
                second = httpx.post(f"{served.url}/summarize", json={"text": CONTEXT}, headers=AUTH)
                assert second.status_code == 429 and second.headers["retry-after"] == "1"
                other = httpx.get(f"{served.url}/v1/tasks", headers={"Authorization": "Bearer someone-else"})
                assert other.status_code == 401, "another client is not blocked by the first one's limit"
                assert first.result().status_code == 200
            metrics = httpx.get(f"{served.url}/metrics").text
            assert (
                'aistack_gateway_requests_total{code="413",method="POST",route="/{endpoint}"} 2.0' in metrics
            )
            assert (
                'aistack_gateway_requests_total{code="429",method="POST",route="/{endpoint}"} 1.0' in metrics
            )
            assert "aistack_gateway_agent_tokens_total" in metrics
            assert httpx.get(f"{served.url}/readyz").json() == {"status": "ready"}
    finally:
        slow.stop()


def test_a_restarted_gateway_loses_no_task(tmp_path: Path) -> None:
    """Records survive a restart; a task that had not finished is run again."""
    from aistack.crds.validation import parse
    from aistack.gateway.server import load_agents
    from aistack.gateway.tasks import validated

    agents = load_agents((QNA_AGENTS,))
    release = threading.Event()
    calls: list[str] = []

    def blocked_run(task: Any, agents: Any, out: str, on_task: Any, cancel: Any) -> Any:
        calls.append(task.metadata.name)
        release.wait(10)
        raise RuntimeError("the machine went away")

    first = LocalTasks(agents, (tmp_path / "out").as_uri(), tmp_path / "state", run=blocked_run)
    first.create(validated(TASK, "default", "tuples"), "alice")
    deadline = time.monotonic() + 5
    while first.get("default", "tuples")["status"]["phase"] != "Running" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.get("default", "tuples")["status"]["phase"] == "Running"
    # the process dies here: a second gateway starts on the same state before the first finishes
    finished = threading.Event()

    def quick_run(task: Any, agents: Any, out: str, on_task: Any, cancel: Any) -> Any:
        calls.append(task.metadata.name)
        on_task("publish", "done")
        finished.set()
        from aistack.pipelines.local import LocalRun

        return LocalRun(
            "tuples-rerun",
            "file:///nonexistent",
            {"publish": json.dumps({"prompt_tokens": 3, "eval_tokens": 1})},
        )

    second = LocalTasks(agents, (tmp_path / "out").as_uri(), tmp_path / "state", run=quick_run)
    assert finished.wait(5)
    second.close()
    status = second.get("default", "tuples")["status"]
    assert status["phase"] == "Succeeded" and status["workflowName"] == "tuples-rerun"
    assert status["tokens"] == {"prompt": 3, "eval": 1}
    assert "unreadable" in status["outputs"]["results"][0]  # reported, not swallowed
    assert calls == ["tuples", "tuples"]
    assert parse({k: v for k, v in second.get("default", "tuples").items() if k != "status"})
    release.set()
    first.close()
