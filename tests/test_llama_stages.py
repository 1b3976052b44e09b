"""Stages on the real embedded LLM: a map and a reduce through the local runner (the stand-in says
what answered), contracts enforced on real output, and a multi-model chat compiled to Argo run the
way Argo runs it (the sidecar's own command, the step's own environment). Kept small: a call is
0.5-2 s on two cores."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from conftest import ROOT, free_port

from aistack.crds.models import TaskOrchestration
from aistack.etl.parquet_io import read_table
from aistack.etl.storage import open_storage
from aistack.pipelines.compile import compile_task
from aistack.pipelines.local import execute, load_task, run_task
from aistack.steps.llama_engine import engine_version
from aistack.steps.model_client import ModelClient
from aistack.steps.model_server import EmbeddedModelServer
from aistack.steps.roles import AgentConfig, StageSettings
from aistack.steps.stages import InputRecord, StageSpec, run_stage

TEXT = (
    "Tuples are immutable sequences, typically used to store collections of heterogeneous data.\n\n"
    "Lists are mutable sequences, typically used to store collections of homogeneous items.\n\n"
    "A set is an unordered collection with no duplicate elements."
)
ENGINE = f"llama.cpp (xllamacpp {engine_version()})"


def test_map_and_reduce_on_the_embedded_llm_say_what_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # no Ollama: the embedded LLM stands in
    _, agents = load_task(ROOT / "examples" / "question-answering" / "task.yaml")
    task = TaskOrchestration.model_validate(
        {"metadata": {"name": "tiny-qna"},
         "spec": {"inputText": TEXT, "question": "Are tuples mutable?", "chunking": {"maxTokens": 24, "overlapTokens": 0},
                  "pipeline": [{"agentRef": "qna-agent", "name": "answer", "mode": "map"},
                               {"agentRef": "qna-agent", "name": "combine", "mode": "reduce"}],
                  "outputTarget": "s3://unused/x/"}}
    )  # fmt: skip
    events: list[str] = []
    run = run_task(task, agents, out=tmp_path.as_uri(), on_event=events.append)
    assert "  llama3.1:8b -> served by the embedded smollm2-135m-instruct LLM (llama.cpp) stand-in" in events
    results = read_table(run.outputs, "results").to_pylist()
    assert [r["stage"] for r in results].count("answer") >= 2 and results[-1]["stage"] == "combine"
    assert {(r["model"], r["served_model"], r["engine"]) for r in results} == {
        ("llama3.1:8b", "smollm2:135m", ENGINE)
    }
    assert all(r["error"] is None and r["response"] and r["eval_tokens"] > 0 for r in results)
    summary = json.loads(open_storage(run.outputs).read_bytes("summary.json"))
    assert summary["models"] == {
        "llama3.1:8b": {"served_by": "smollm2:135m", "engine": ENGINE, "stand_in": True}
    }
    assert summary["prompt_tokens"] == sum(r["prompt_tokens"] for r in results)
    assert summary["outputs"] == [results[-1]["response"]]


def test_contracts_hold_on_real_output() -> None:
    """A classifier's answer is one of its labels; an extractor asked for the impossible is re-asked
    and then dead-lettered, never passed on invalid."""
    impossible = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 10, "maximum": 5}},
                  "required": ["n"]}  # fmt: skip
    classify = StageSpec("kind", "map", AgentConfig("c", "smollm2:135m", "classifier", options={"temperature": 0}),
                         StageSettings(labels=("data structures", "cooking")), error_budget_percent=100)  # fmt: skip
    extract = StageSpec("n", "map", AgentConfig("x", "smollm2:135m", "extractor", options={"temperature": 0}),
                        StageSettings(output_schema=impossible), error_budget_percent=100)  # fmt: skip
    records = [InputRecord("r1", TEXT)]

    async def go(url: str) -> tuple[Any, Any]:
        client = ModelClient(url)
        try:
            return await run_stage(client, classify, records), await run_stage(client, extract, records)
        finally:
            await client.close()

    import asyncio

    with EmbeddedModelServer(parallel=1) as server:
        classified, extracted = asyncio.run(go(server.url))
        assert server.stats["generations"] >= 4
    (row,) = classified.rows
    if row["error"] is None:  # a valid answer is a label; otherwise it was dead-lettered, with the reason
        assert json.loads(row["response"])["label"] in ("data structures", "cooking")
    else:
        assert row["response"] is None and "output contract violated after 3 tries" in row["error"]
    (dead,) = extracted.rows
    assert dead["response"] is None and dead["attempts"] == 3
    assert "output contract violated after 3 tries" in dead["error"] and "schema at n:" in dead["error"]


@pytest.fixture
def sidecar_port() -> Iterator[int]:
    yield free_port()


def _wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else "sidecar exited"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"the sidecar at {url} did not come up")


def test_a_multi_model_chat_compiled_to_argo_gets_all_its_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sidecar_port: int
) -> None:
    """The dev overlay's CPU agents: the stage pod's sidecar is started with its compiled command
    and the step runs with its compiled environment, as Argo would run them (not the local runner's
    own model server). Every model of the chat is served, and the judge closes it."""
    task, agents = load_task(ROOT / "examples" / "multi-model-chat" / "task.yaml")
    for agent in agents.values():
        agent.spec.resources.gpu = 0
        agent.spec.env = [e for e in agent.spec.env if e.name != "NUM_PREDICT"]
        agent.spec.env.append(type(agent.spec.env[0])(name="NUM_PREDICT", value="40"))
    task.spec.input, task.spec.input_text = None, TEXT
    task.spec.pipeline[0].rounds = 1
    task.spec.output_target = tmp_path.as_uri()
    wf = compile_task(task, agents, name="debate-run")
    stage = next(t for t in wf.build().spec.templates if t.name == "stage-debate")
    (sidecar,) = stage.sidecars
    command = [arg.replace("11434", str(sidecar_port)) for arg in sidecar.command]
    assert command[:3] == ["aistack", "models", "serve"]
    server = subprocess.Popen(
        [sys.executable, "-m", "aistack", *command[1:]],
        env={**os.environ, **{e.name: e.value for e in sidecar.env}},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{sidecar_port}"
        _wait_until_up(url, server)
        listed = {m.model for m in ollama.Client(host=url).list().models}
        assert {"mistral:7b", "qwen2.5:7b", "llama3.1:8b"} <= listed, "the sidecar serves every model"
        for e in stage.script.env:
            monkeypatch.setenv(e.name, e.value.replace("11434", str(sidecar_port)))
        monkeypatch.setenv("AISTACK_MODEL_WAIT_SECONDS", "30")
        results = execute(wf, workers=1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    rows = read_table(json.loads(results["publish"])["outputs"], "results").to_pylist()
    assert [r["agent"] for r in rows] == ["advocate", "skeptic", "judge"]
    assert [r["model"] for r in rows] == ["mistral:7b", "qwen2.5:7b", "llama3.1:8b"]
    assert all(r["served_model"] == "smollm2:135m" and r["error"] is None for r in rows)
    assert rows[-1]["final"] and rows[-1]["response"]


def test_a_model_the_server_cannot_provide_fails_the_step_at_once() -> None:
    from aistack.pipelines.model_servers import ModelUnavailableError, wait_for_model

    with EmbeddedModelServer(stand_in_engine="extractive") as server:
        started = time.monotonic()
        with pytest.raises(ModelUnavailableError, match=r"cannot provide 'mistral:7b': pull model manifest"):
            wait_for_model(server.url, "mistral:7b", timeout=900)
        assert time.monotonic() - started < 10, "no polling for the full timeout"
        wait_for_model(server.url, "aistack-extractive", timeout=5)  # listed: returns at once
    with socket.socket() as s:  # nothing listens here: the server never answers
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TimeoutError, match="did not answer within 2s"):
        wait_for_model(f"http://127.0.0.1:{port}", "x", timeout=2)
