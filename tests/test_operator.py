"""The operator through kopf's real machinery (KopfRunner) against an API server stand-in (kmock)
over HTTP, acting as kubectl would with the `kubernetes` client. The stand-in prunes unknown
fields as a structural schema does, so every test fails on kopf's inconsistency warning."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from conftest import ROOT
from kopf.testing import KopfRunner
from kube import OPERATOR_RESOURCES, ApiServer

from aistack.crds.validation import load_file

SEED = load_file(ROOT / "crds" / "examples" / "seed.yaml")
AGENTS = [d for d in SEED if d["kind"] == "OllamaAgent"]
TASK = next(d for d in SEED if d["kind"] == "TaskOrchestration")


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    import kubernetes

    with ApiServer(tmp_path, OPERATOR_RESOURCES) as server:
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig))
        monkeypatch.setattr(
            kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(server.kubeconfig)
        )
        monkeypatch.setenv("AISTACK_AGENT_RETRY_SECONDS", "0.5")
        from aistack.operator import handlers, kube

        monkeypatch.setattr(handlers, "AGENT_RETRY_SECONDS", 0.5)
        kube.api_client.cache_clear()
        yield server
        kube.api_client.cache_clear()


INCONSISTENT = "Merge-patching finished with inconsistencies"


def settings_for_tests() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True
    settings.watching.server_timeout = 1
    settings.watching.client_timeout = 2
    settings.queueing.idle_timeout = 0.5
    settings.queueing.exit_timeout = 0.5
    return settings


@pytest.fixture
def operator(api: ApiServer) -> Iterator[KopfRunner]:
    with KopfRunner(
        ["run", "--standalone", "-n", "default", "-m", "aistack.operator.main"],
        settings=settings_for_tests(),
        timeout=30,
    ) as runner:
        yield runner
    # what a real API server would have pruned, and kopf warned about, on every reconcile
    assert INCONSISTENT not in runner.output


def client(api: ApiServer) -> Any:
    import kubernetes

    return kubernetes.client.CustomObjectsApi(kubernetes.config.new_client_from_config(str(api.kubeconfig)))


def create(api: ApiServer, obj: dict[str, Any]) -> dict[str, Any]:
    plural = {"OllamaAgent": "ollamaagents", "TaskOrchestration": "taskorchestrations"}[obj["kind"]]
    return client(api).create_namespaced_custom_object("ai.stack", "v1alpha1", "default", plural, obj)


def status_of(api: ApiServer, plural: str, name: str) -> dict[str, Any]:
    return (
        client(api)
        .get_namespaced_custom_object("ai.stack", "v1alpha1", "default", plural, name)
        .get("status")
        or {}
    )


def test_task_becomes_one_owned_workflow(api: ApiServer, operator: KopfRunner) -> None:
    for agent in AGENTS:
        create(api, agent)
    wait_for(
        lambda: all(
            status_of(api, "ollamaagents", a["metadata"]["name"]).get("phase") == "Ready" for a in AGENTS
        ),
        what="agents Ready",
    )
    task = create(api, TASK)
    workflows = wait_for(lambda: api.objects("workflows"), what="a workflow")
    (wf,) = workflows
    assert wf["metadata"]["name"] == "answer-and-summarize-g1"
    assert wf["metadata"]["ownerReferences"][0]["uid"] == task["metadata"]["uid"]
    status = wait_for(
        lambda: (s := status_of(api, "taskorchestrations", "answer-and-summarize")).get("workflowName") and s,
        what="status",
    )
    assert status["phase"] == "Submitted"
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds == {"AgentsReady": "True", "Submitted": "True"}
    time.sleep(1.5)  # reconcile loops, timers and re-lists must not create a second one
    assert len(api.objects("workflows")) == 1


def test_missing_agent_is_reported_then_the_task_proceeds(api: ApiServer, operator: KopfRunner) -> None:
    create(api, AGENTS[0])  # summarizer-agent only
    create(api, TASK)
    status = wait_for(
        lambda: (s := status_of(api, "taskorchestrations", "answer-and-summarize")).get("conditions") and s,
        what="condition",
    )
    (cond,) = status["conditions"]
    assert (
        cond["type"] == "AgentsReady"
        and cond["status"] == "False"
        and "missing: qna-agent" in cond["message"]
    )
    assert api.objects("workflows") == []
    create(api, AGENTS[1])  # the qna agent appears: no re-apply of the task needed
    wait_for(lambda: api.objects("workflows"), what="a workflow after the agent appeared")
    wait_for(
        lambda: status_of(api, "taskorchestrations", "answer-and-summarize").get("phase") == "Submitted",
        what="Submitted",
    )
    # what `kubectl describe tasko answer-and-summarize` shows
    events = wait_for(
        lambda: (
            (e := api.events_for("answer-and-summarize"))
            and any(r == "WorkflowCreated" for _, r, _ in e)
            and e
        ),
        what="events",
    )
    ours = [(t, r, m) for t, r, m in events if r != "Logging"]
    assert ours[0][:2] == ("Warning", "AgentsNotReady") and ours[0][2].startswith(
        "OllamaAgents missing: qna-agent"
    )
    assert ours[0][2].endswith("; retrying every 0.5 s")
    assert ours[-1] == ("Normal", "WorkflowCreated", "Workflow answer-and-summarize-g1 created")
    not_ready = [m for _, r, m in ours if r == "AgentsNotReady"]
    assert len(not_ready) == len(set(not_ready)), "one Event per change, not one per retry"
    # kopf's own per-object log lines are Events too: a retrying handler says why
    assert any(t == "Error" and "missing: qna-agent" in m for t, r, m in events if r == "Logging")


def test_workflow_progress_is_mirrored_into_status(
    api: ApiServer, operator: KopfRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    for agent in AGENTS:
        create(api, agent)
    create(api, TASK)
    wait_for(lambda: api.objects("workflows"), what="a workflow")
    nodes = {
        "n1": {"type": "Pod", "phase": "Succeeded", "templateName": "ingest", "displayName": "ingest"},
        "n2": {"type": "Pod", "phase": "Succeeded", "templateName": "stage-qna-agent", "displayName": "qna-agent(0)",
               "outputs": {"result": '{"prompt_tokens": 120, "eval_tokens": 30}'}},
        "n3": {"type": "Pod", "phase": "Failed", "templateName": "stage-summarizer-agent", "displayName": "summarizer-agent",
               "message": "Error (exit code 1): stage 'summarizer-agent': 3 of 4 records failed", "finishedAt": "2026-11-24T10:00:00Z"},
    }  # fmt: skip
    client(api).patch_namespaced_custom_object(
        "argoproj.io", "v1alpha1", "default", "workflows", "answer-and-summarize-g1",
        {"status": {"phase": "Failed", "startedAt": "2026-11-24T09:59:00Z", "finishedAt": "2026-11-24T10:00:01Z", "nodes": nodes}},
    )  # fmt: skip
    status = wait_for(
        lambda: (
            (s := status_of(api, "taskorchestrations", "answer-and-summarize")).get("phase") == "Failed" and s
        ),
        timeout=25,
        what="Failed",
    )
    assert status["progress"] == {"done": 2, "total": 3, "text": "2/3"}
    assert status["tokens"] == {"prompt": 120, "eval": 30, "total": 150}
    assert status["message"] == (
        "Workflow answer-and-summarize-g1 failed: step summarizer-agent: Error (exit code 1): "
        "stage 'summarizer-agent': 3 of 4 records failed"
    )
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds["Failed"] == "True" and conds["Succeeded"] == "False"
    failed = wait_for(
        lambda: [e for e in api.events_for("answer-and-summarize") if e[1] == "Failed"], what="a Failed event"
    )
    assert failed == [("Warning", "Failed", status["message"])]


def test_the_message_follows_the_phase_to_success(api: ApiServer, operator: KopfRunner) -> None:
    for agent in AGENTS:
        create(api, agent)
    wait_for(
        lambda: all(
            status_of(api, "ollamaagents", a["metadata"]["name"]).get("phase") == "Ready" for a in AGENTS
        ),
        what="agents Ready",
    )
    create(api, TASK)
    wait_for(
        lambda: (
            status_of(api, "taskorchestrations", "answer-and-summarize").get("message")
            == "Workflow answer-and-summarize-g1 created"
        ),
        what="created",
    )
    running = {"n1": {"type": "Pod", "phase": "Succeeded", "templateName": "ingest", "displayName": "ingest"},
               "n2": {"type": "Pod", "phase": "Running", "templateName": "shards", "displayName": "shards"}}  # fmt: skip
    wf = ("argoproj.io", "v1alpha1", "default", "workflows", "answer-and-summarize-g1")
    client(api).patch_namespaced_custom_object(*wf, {"status": {"phase": "Running", "nodes": running}})
    wait_for(
        lambda: (
            status_of(api, "taskorchestrations", "answer-and-summarize").get("message")
            == "Workflow answer-and-summarize-g1 running: 1/2 steps done"
        ),
        timeout=25,
        what="running",
    )
    done = {**running, "n2": {**running["n2"], "phase": "Succeeded"},
            "n3": {"type": "Pod", "phase": "Succeeded", "templateName": "publish", "displayName": "publish",
                   "outputs": {"result": '{"outputs": "s3://ai-results/qa/run-1/"}'}}}  # fmt: skip
    client(api).patch_namespaced_custom_object(*wf, {"status": {"phase": "Succeeded", "nodes": done}})
    status = wait_for(
        lambda: (
            (s := status_of(api, "taskorchestrations", "answer-and-summarize")).get("phase") == "Succeeded"
            and s
        ),
        timeout=25,
        what="Succeeded",
    )
    assert (
        status["message"]
        == "Workflow answer-and-summarize-g1 succeeded; outputs at s3://ai-results/qa/run-1/"
    )
    assert status["outputs"] == "s3://ai-results/qa/run-1/"
    reasons = wait_for(
        lambda: (
            (r := [e[1] for e in api.events_for("answer-and-summarize") if e[1] != "Logging"])
            and "Succeeded" in r
            and r
        ),
        what="the Succeeded event",
    )
    assert reasons == ["WorkflowCreated", "Running", "Succeeded"]


def test_service_agent_gets_deployment_and_service(api: ApiServer, operator: KopfRunner) -> None:
    agent = {
        **AGENTS[0],
        "metadata": {"name": "summarizer-svc"},
        "spec": {**AGENTS[0]["spec"], "mode": "service", "replicas": 2},
    }
    create(api, agent)
    deployment = wait_for(lambda: api.objects("deployments"), what="a deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    (ollama,) = pod["containers"]
    assert (
        ollama["resources"]["limits"]["nvidia.com/gpu"] == "1"
        and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    )
    assert (
        pod["initContainers"][0]["name"] == "pull-model"
        and "ollama pull llama3" in pod["initContainers"][0]["command"][-1]
    )
    assert ollama["readinessProbe"]["exec"]["command"] == ["ollama", "show", "llama3"]
    assert ollama["securityContext"]["runAsNonRoot"] is True and deployment["spec"]["replicas"] == 2
    assert deployment["metadata"]["ownerReferences"][0]["name"] == "summarizer-svc"
    service = wait_for(lambda: api.objects("services"), what="a service")[0]
    assert service["metadata"]["name"] == "summarizer-svc" and service["spec"]["ports"][0]["port"] == 11434
    status = wait_for(
        lambda: (s := status_of(api, "ollamaagents", "summarizer-svc")).get("phase") and s, what="status"
    )
    assert status["phase"] == "Pulling" and status["serviceUrl"] == "http://summarizer-svc.default.svc:11434"


def test_restart_after_create_before_status_adopts_the_workflow(api: ApiServer, tmp_path: Path) -> None:
    """A crash between creating the workflow and patching status: the next reconcile adopts it."""
    from aistack.crds.validation import parse
    from aistack.operator.handlers import workflow_name
    from aistack.pipelines.compile import compile_task

    for agent in AGENTS:
        created = create(api, agent)
        client(api).patch_namespaced_custom_object_status(
            "ai.stack", "v1alpha1", "default", "ollamaagents", created["metadata"]["name"],
            {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        )  # fmt: skip
    task = create(api, TASK)
    # what the previous operator process managed to do before it died
    body = compile_task(
        parse(TASK),
        {a["metadata"]["name"]: parse(a) for a in AGENTS},
        name=workflow_name("answer-and-summarize", 1),
    ).to_dict()  # type: ignore[arg-type]
    client(api).create_namespaced_custom_object("argoproj.io", "v1alpha1", "default", "workflows", body)
    with KopfRunner(
        ["run", "--standalone", "-n", "default", "-m", "aistack.operator.main"],
        settings=settings_for_tests(),
        timeout=30,
    ) as runner:
        status = wait_for(
            lambda: (
                (s := status_of(api, "taskorchestrations", "answer-and-summarize")).get("workflowName") and s
            ),
            what="status",
        )
    assert len(api.objects("workflows")) == 1 and INCONSISTENT not in runner.output
    submitted = next(c for c in status["conditions"] if c["type"] == "Submitted")
    assert submitted["reason"] == "WorkflowAdopted" and task["metadata"]["uid"]
    assert "WorkflowAdopted: Workflow answer-and-summarize-g1 adopted" in runner.output


def test_deleting_a_task_is_not_blocked(api: ApiServer, operator: KopfRunner) -> None:
    """Only kopf's own finalizer (it stops the status timer), released at once on deletion;
    owned workflows go by ownerReference garbage collection (not emulated by the stand-in)."""
    for agent in AGENTS:
        create(api, agent)
    create(api, TASK)
    wf = wait_for(lambda: api.objects("workflows"), what="a workflow")[0]
    task = client(api).get_namespaced_custom_object(
        "ai.stack", "v1alpha1", "default", "taskorchestrations", "answer-and-summarize"
    )
    assert task["metadata"].get("finalizers", []) in ([], ["kopf.zalando.org/KopfFinalizerMarker"])
    client(api).delete_namespaced_custom_object(
        "ai.stack", "v1alpha1", "default", "taskorchestrations", "answer-and-summarize"
    )
    wait_for(lambda: not api.objects("taskorchestrations"), what="the task gone")
    assert wf["metadata"]["ownerReferences"][0]["kind"] == "TaskOrchestration"
    assert wf["metadata"]["ownerReferences"][0].get("blockOwnerDeletion") is True


def test_an_invalid_task_fails_with_every_problem_named(api: ApiServer, operator: KopfRunner) -> None:
    """The stand-in does no schema validation (a real API server would reject this at apply)."""
    bad = {
        **TASK,
        "spec": {**TASK["spec"], "outputTarget": "ftp://x", "parallelism": 0},
    }
    create(api, bad)
    status = wait_for(
        lambda: (s := status_of(api, "taskorchestrations", "answer-and-summarize")).get("phase") and s,
        what="status",
    )
    assert status["phase"] == "Failed"
    assert "spec.parallelism" in status["message"] and "spec.outputTarget" in status["message"]
    assert {"type": "Valid", "status": "False"}.items() <= status["conditions"][0].items()
    assert api.objects("workflows") == []


def test_the_stand_in_prunes_like_a_structural_schema(api: ApiServer, tmp_path: Path) -> None:
    """Unknown status fields vanish on write, as on a real API server; and kopf, storing a
    handler's return value in status, then warns: the guard in the `operator` fixture can fail."""
    created = create(api, AGENTS[0])
    name = created["metadata"]["name"]
    client(api).patch_namespaced_custom_object_status(
        "ai.stack", "v1alpha1", "default", "ollamaagents", name,
        {"status": {"phase": "Ready", "reconcile_agent": {"done": True}}},
    )  # fmt: skip
    assert status_of(api, "ollamaagents", name) == {"phase": "Ready"}
    returns = tmp_path / "returns_a_value.py"
    returns.write_text(
        "import kopf\n\n\n"
        "@kopf.on.login()\n"
        "def login(**kwargs):\n"
        "    return kopf.login_via_client(**kwargs)\n\n\n"
        "@kopf.on.create('ai.stack', 'v1alpha1', 'ollamaagents')\n"
        "def remember(**_):\n"
        "    return {'stored': 'in status'}\n"
    )
    from kopf._core.intents import registries

    default = registries.get_default_registry()
    try:
        with KopfRunner(
            ["run", "--standalone", "-n", "default", str(returns)],
            registry=kopf.OperatorRegistry(),
            settings=settings_for_tests(),
            timeout=30,
        ) as runner:
            assert api.emulator is not None
            wait_for(
                lambda: any("remember" in str(body) for _, _, body in api.emulator.writes),
                what="the handler's return value sent",
            )
            time.sleep(1)  # kopf compares what came back with what it sent
    finally:
        registries.set_default_registry(default)
    assert f"{INCONSISTENT}: (('remove', ('status', 'remember')" in runner.output


def test_a_changed_schedule_replaces_the_previous_cronworkflow(api: ApiServer, operator: KopfRunner) -> None:
    """A scheduled task has one schedule: a new generation's CronWorkflow replaces the previous one's
    (which is deleted, or both would fire)."""
    import copy

    for agent in AGENTS:
        create(api, agent)
    wait_for(lambda: all(status_of(api, "ollamaagents", a["metadata"]["name"]).get("phase") == "Ready" for a in AGENTS),
             what="agents Ready")  # fmt: skip
    task = copy.deepcopy(TASK)
    task["spec"]["schedule"] = {"cron": "0 3 * * *"}
    create(api, task)
    wait_for(lambda: api.names("cronworkflows") == ["answer-and-summarize-g1"], what="the first schedule")
    client(api).patch_namespaced_custom_object(
        "ai.stack", "v1alpha1", "default", "taskorchestrations", "answer-and-summarize",
        {"metadata": {"generation": 2}, "spec": {"schedule": {"cron": "0 4 * * *"}}},
    )  # fmt: skip
    wait_for(lambda: api.names("cronworkflows") == ["answer-and-summarize-g2"], what="the schedule replaced")
    (cron,) = api.objects("cronworkflows")
    assert cron["spec"]["schedules"] == ["0 4 * * *"]
    reasons = [reason for _, reason, _ in api.events_for("answer-and-summarize")]
    assert "ScheduleReplaced" in reasons
