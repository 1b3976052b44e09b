"""Local-mode runs and their records: DELETE cancels a running task (the real runner stops
before its next step and frees the worker), a task re-created under the same name starts clean,
a corrupt record in --state-dir is moved aside instead of stopping the gateway, records are
written durably, /readyz follows the model server, and failures read as one line."""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_gateway import AUTH, QNA_AGENTS, TASK, make_app, wait_for

from aistack.crds.models import TaskOrchestration, TaskOrchestrationSpec
from aistack.crds.validation import parse
from aistack.gateway.server import load_agents
from aistack.gateway.tasks import LocalTasks, validated
from aistack.pipelines import local
from aistack.pipelines.compile import compile_task
from aistack.pipelines.local import LocalRun, RunCancelled, execute
from aistack.steps.model_server import EmbeddedModelServer


@pytest.fixture
def model_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = EmbeddedModelServer(models=["aistack-extractive"], parallel=4)
    host = server.start()
    monkeypatch.setenv("OLLAMA_HOST", host)
    yield host
    server.stop()


def named(name: str) -> dict[str, Any]:
    task = copy.deepcopy(TASK)
    task["metadata"]["name"] = name
    return task


def settle(tasks: LocalTasks, name: str, phase: str) -> dict[str, Any]:
    """The task's status once it reaches `phase` (within 10 s)."""
    deadline = time.monotonic() + 10
    while (status := tasks.get("default", name)["status"])["phase"] != phase and time.monotonic() < deadline:
        time.sleep(0.02)
    assert status["phase"] == phase, status
    return status


def test_the_runner_stops_before_its_next_step_when_cancelled(tmp_path: Path, model_host: str) -> None:
    task = parse(
        validated({**TASK, "spec": {**TASK["spec"], "outputTarget": tmp_path.as_uri()}}, "default", "t")
    )
    assert isinstance(task, TaskOrchestration)
    wf = compile_task(task, load_agents((QNA_AGENTS,)), name="cancelled")
    cancel, events = threading.Event(), []

    def on_task(name: str, event: str) -> None:
        events.append((name, event))
        if (name, event) == ("ingest", "done"):
            cancel.set()

    with pytest.raises(RunCancelled, match="cancelled before step etl"):
        execute(wf, on_task=on_task, cancel=cancel)
    assert events == [("plan", "started"), ("plan", "done"), ("ingest", "started"), ("ingest", "done")]


def test_delete_cancels_a_running_task_and_a_recreate_starts_clean(
    tmp_path: Path, model_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real local runner, held between two steps of the first run (after ingest) so that the
    DELETE lands while it is Running; released, it must stop there and free the single worker."""
    real_run = local.run_task
    held, release = threading.Event(), threading.Event()
    steps: dict[str, list[str]] = {}

    def run_held_once(task: Any, agents: Any, out: str, on_task: Any, cancel: Any) -> LocalRun:
        first = not held.is_set()

        def hooked(name: str, event: str) -> None:
            on_task(name, event)
            steps.setdefault(out if first else "later", []).append(f"{name} {event}")
            if first and (name, event) == ("ingest", "done"):
                held.set()
                assert release.wait(30)

        return real_run(task, agents, out=out, on_task=hooked, cancel=cancel)

    monkeypatch.setattr(local, "run_task", run_held_once)
    with TestClient(make_app(tmp_path)) as c:
        assert c.post("/v1/tasks", json=TASK, headers=AUTH).status_code == 201
        assert held.wait(30)
        deleted = c.get("/v1/tasks/tuples", headers=AUTH).json()
        assert deleted["status"]["phase"] == "Running"
        assert c.delete("/v1/tasks/tuples", headers=AUTH).status_code == 200
        recreated = c.post("/v1/tasks", json=TASK, headers=AUTH)
        assert recreated.status_code == 201, recreated.text
        fresh = recreated.json()["task"]
        assert fresh["status"] == {"phase": "Pending", "message": "queued for the local runner"}
        assert fresh["metadata"]["uid"] != deleted["metadata"]["uid"]
        release.set()  # the deleted run goes on to its next step, sees the cancel and stops
        status = wait_for(c, "tuples")
        assert status["phase"] == "Succeeded", status
        (first_out,) = [k for k in steps if k != "later"]
        expected = ["plan started", "plan done", "ingest started", "ingest done"]
        assert steps[first_out] == expected, "nothing ran after the delete"
        assert "publish done" in steps["later"]
        uri = status["outputs"]["uri"]
        assert (Path(uri.removeprefix("file://")) / "summary.json").is_file()
        # only the new run published anything
        published = sorted(p.parent for p in (tmp_path / "out").rglob("summary.json"))
        assert published == [Path(uri.removeprefix("file://"))]
        assert status["startTime"] >= fresh["metadata"]["creationTimestamp"]


def test_an_old_run_never_writes_into_the_new_record(tmp_path: Path) -> None:
    """A run that ignores its cancel and finishes after its task was deleted and re-created
    (two workers: both run at once) leaves the new record alone."""
    agents = load_agents((QNA_AGENTS,))
    started = {"tuples": threading.Semaphore(0)}
    release_old = threading.Event()
    calls: list[str] = []

    def run(task: Any, agents: Any, out: str, on_task: Any, cancel: Any) -> LocalRun:
        calls.append(task.metadata.uid)
        started["tuples"].release()
        if len(calls) == 1:
            release_old.wait(10)
            on_task("stage", "done")
            return LocalRun("old-run", "file:///nonexistent/old", {"publish": "{}"})
        raise RuntimeError("the new run fails on its own")

    tasks = LocalTasks(agents, (tmp_path / "out").as_uri(), tmp_path / "state", workers=2, run=run)
    try:
        tasks.create(validated(TASK, "default", "tuples"), "alice")
        assert started["tuples"].acquire(timeout=5)
        tasks.delete("default", "tuples")
        tasks.create(validated(TASK, "default", "tuples"), "alice")
        assert started["tuples"].acquire(timeout=5)
        settle(tasks, "tuples", "Failed")
        release_old.set()
    finally:
        tasks.close()
    status = tasks.get("default", "tuples")["status"]
    assert status["phase"] == "Failed" and status["message"] == "RuntimeError: the new run fails on its own"
    assert "workflowName" not in status and "outputs" not in status and "progress" not in status
    assert len(set(calls)) == 2


def corrupt_state(state: Path) -> dict[str, Path]:
    state.mkdir(parents=True)
    good = json.loads(json.dumps(validated(TASK, "default", "good")))
    good["status"] = {"phase": "Succeeded", "message": "done earlier"}
    (state / "default.good.json").write_text(json.dumps(good))
    files = {
        "truncated": state / "default.truncated.json",
        "binary": state / "default.binary.json",
        "other-task": state / "default.renamed.json",
        "fifo": state / "default.fifo.json",
    }
    files["truncated"].write_text(json.dumps(validated(TASK, "default", "truncated"))[:150])
    files["binary"].write_bytes(b"\xff\xfe\x00garbage")
    files["other-task"].write_text(json.dumps(good))  # a copy of another task's record
    os.mkfifo(files["fifo"])
    (state / ".default.good.json.tmp123").write_text("{")  # a write that never finished
    return files


def test_a_corrupt_state_file_is_moved_aside_and_the_gateway_starts(
    tmp_path: Path, model_host: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    files = corrupt_state(state)
    with caplog.at_level(logging.ERROR, logger="aistack.gateway"), TestClient(make_app(tmp_path)) as c:
        items = c.get("/v1/tasks", headers=AUTH).json()["items"]
    assert [(t["metadata"]["name"], t["status"]["phase"]) for t in items] == [("good", "Succeeded")]
    remaining = sorted(p.name for p in state.iterdir())
    assert "default.good.json" in remaining and ".default.good.json.tmp123" not in remaining
    for path in files.values():
        assert not path.exists(), path
        (aside,) = [n for n in remaining if n.startswith(f"{path.name}.corrupt-")]
        (line,) = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
        assert line.startswith(f"skipping unreadable task record {path} (") and line.endswith(aside)
    messages = {r.getMessage() for r in caplog.records}
    assert any("JSONDecodeError" in m for m in messages) and any("not a regular file" in m for m in messages)
    assert any("holds task default/good, whose record is default.good.json" in m for m in messages)


def test_records_are_written_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each write fsyncs the record's file and, after the rename, the directory holding it."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    release = threading.Event()

    def run(task: Any, agents: Any, out: str, on_task: Any, cancel: Any) -> LocalRun:
        release.wait(10)
        raise RuntimeError("stop")

    state = tmp_path / "state"
    tasks = LocalTasks(load_agents((QNA_AGENTS,)), (tmp_path / "out").as_uri(), state, run=run)
    try:
        tasks.create(validated(TASK, "default", "tuples"), "alice")
        first = synced[:2]
        assert Path(first[0]).name.startswith(".default.tuples.json.") and first[1] == str(state.resolve())
        settle(tasks, "tuples", "Running")
        assert json.loads((state / "default.tuples.json").read_text())["status"]["phase"] == "Running"
        synced.clear()
        tasks.delete("default", "tuples")
        assert synced == [str(state.resolve())] and not (state / "default.tuples.json").exists()
    finally:
        release.set()
        tasks.close()


def test_readyz_follows_the_model_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = EmbeddedModelServer(models=["aistack-extractive"])
    host = server.start()
    monkeypatch.setenv("OLLAMA_HOST", host)
    try:
        with TestClient(make_app(tmp_path)) as c:
            assert c.get("/readyz").json() == {"status": "ready"}
            server.stop()
            r = c.get("/readyz")
            assert r.status_code == 503 and r.json()["reason"] == "ServiceUnavailable"
            assert r.json()["message"] == f"not ready: the model server at {host} does not answer"
            assert c.get("/healthz").status_code == 200, "alive, only not ready"
    finally:
        server.stop()


def test_a_failed_run_reads_as_one_line_naming_the_field(tmp_path: Path) -> None:
    def run(task: Any, agents: Any, out: str, on_task: Any, cancel: Any) -> LocalRun:
        TaskOrchestrationSpec.model_validate({**task.spec.model_dump(by_alias=True), "outputTarget": "/x"})
        raise AssertionError("unreachable")

    tasks = LocalTasks(load_agents((QNA_AGENTS,)), (tmp_path / "out").as_uri(), tmp_path / "state", run=run)
    tasks.create(validated(TASK, "default", "tuples"), "alice")
    status = settle(tasks, "tuples", "Failed")
    tasks.close()
    assert status["message"].startswith(
        "ValidationError: invalid TaskOrchestrationSpec: outputTarget: String should match pattern"
    )
    assert "\n" not in status["message"] and "pydantic.dev" not in status["message"]


def test_the_gateway_takes_a_plain_out_path(tmp_path: Path, model_host: str) -> None:
    plain = tmp_path / "plain results"
    with TestClient(make_app(tmp_path, out=str(plain))) as c:
        assert c.post("/v1/tasks", json=named("plain"), headers=AUTH).status_code == 201
        status = wait_for(c, "plain")
    assert status["phase"] == "Succeeded", status
    assert status["outputs"]["uri"].startswith(f"{plain.as_uri()}/default/plain/")
    with pytest.raises(ValueError, match=r"^--out: 's3://Bad_Bucket' is not a path"):
        make_app(tmp_path, out="s3://Bad_Bucket")


def test_stopping_the_gateway_cancels_runs_and_the_next_start_requeues_them(tmp_path: Path) -> None:
    agents, state, out = load_agents((QNA_AGENTS,)), tmp_path / "state", (tmp_path / "out").as_uri()
    running = threading.Event()

    def cooperative(task: Any, agents: Any, out: str, on_task: Any, cancel: Any) -> LocalRun:
        running.set()
        assert cancel.wait(30), "never cancelled"
        raise RunCancelled("cancelled before step etl")

    first = LocalTasks(agents, out, state, run=cooperative)
    first.create(validated(TASK, "default", "tuples"), "alice")
    first.create(validated(named("queued"), "default", "queued"), "alice")
    assert running.wait(5)
    started = time.monotonic()
    first.close()
    assert time.monotonic() - started < 5, "close did not wait for the run to end by itself"
    phases = {t["metadata"]["name"]: t["status"]["phase"] for t in first.list("default")}
    assert phases == {"tuples": "Running", "queued": "Pending"}
    reruns: list[str] = []

    def quick(task: Any, agents: Any, out: str, on_task: Any, cancel: Any) -> LocalRun:
        reruns.append(task.metadata.name)
        return LocalRun(f"{task.metadata.name}-rerun", "file:///nonexistent", {"publish": "{}"})

    second = LocalTasks(agents, out, state, run=quick)
    deadline = time.monotonic() + 10
    while len(reruns) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    second.close()
    assert sorted(reruns) == ["queued", "tuples"]
    assert {t["status"]["phase"] for t in second.list("default")} == {"Succeeded"}
