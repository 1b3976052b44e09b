"""The gateway in cluster mode, against the kmock API server through the real kubernetes client:
callers are identified by TokenReview and authorized by SubjectAccessReview (their own RBAC), and
tasks become TaskOrchestration CRs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from aiohttp import web
from fastapi.testclient import TestClient
from kube import OPERATOR_RESOURCES, ApiServer, Emulator
from test_gateway import CONTEXT, TASK

from aistack.gateway.server import build_app
from aistack.gateway.settings import GatewaySettings
from aistack.steps.model_server import EmbeddedModelServer

USERS = {"alice-token": ("alice", ["devs"]), "bob-token": ("bob", ["viewers"])}
# RBAC as the API server would decide it: alice may do anything in "default"; bob may only read
REVIEWS: list[dict[str, Any]] = []


def allowed(user: str, attributes: dict[str, Any]) -> bool:
    if attributes.get("namespace") != "default":
        return False
    return user == "alice" or attributes["verb"] in ("get", "list")


class AuthEmulator(Emulator):
    """kmock plus the two review APIs the gateway calls."""

    async def _handle(self, request: kmock.Request) -> Any:
        path = request.url.path
        if request.method == kmock.method.POST and path == "/apis/authentication.k8s.io/v1/tokenreviews":
            token = request.data["spec"]["token"]
            user = USERS.get(token)
            status = {"authenticated": True, "user": {"username": user[0], "groups": user[1]}} if user else {
                "authenticated": False, "error": "invalid bearer token"}  # fmt: skip
            review = {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": request.data["spec"],
                "status": status,
            }
            return web.json_response(review, status=201)
        if (
            request.method == kmock.method.POST
            and path == "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        ):
            spec = request.data["spec"]
            REVIEWS.append(spec)
            ok = allowed(spec["user"], spec["resourceAttributes"])
            return web.json_response(status=201, data={
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec,
                "status": {"allowed": ok, **({} if ok else {"reason": "no RBAC policy matched"})}})  # fmt: skip
        if request.method == kmock.method.GET and path.rstrip("/") == "/version":
            return web.json_response({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "kmock", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})  # fmt: skip
        return await super()._handle(request)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ApiServer]:
    with ApiServer(tmp_path, OPERATOR_RESOURCES, AuthEmulator) as api:
        yield api


@pytest.fixture
def gateway(cluster: ApiServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    model = EmbeddedModelServer(models=["aistack-extractive"])
    host = model.start()
    settings = GatewaySettings(mode="cluster", kubeconfig=str(cluster.kubeconfig), ollama_host=host)
    app, description = build_app(settings)
    assert description.startswith("cluster mode: API server http://127.0.0.1:")
    with TestClient(app) as c:
        yield c
    model.stop()


def as_user(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tasks_become_custom_resources(gateway: TestClient, cluster: ApiServer) -> None:
    r = gateway.post("/v1/tasks", json=TASK, headers=as_user("alice-token"))
    assert r.status_code == 201, r.text
    (stored,) = cluster.objects("taskorchestrations")
    assert stored["metadata"]["name"] == "tuples" and stored["metadata"]["namespace"] == "default"
    assert stored["metadata"]["annotations"]["ai.stack/submitted-by"] == "alice"
    assert stored["spec"]["question"] == "What are tuples?" and stored["spec"]["chunking"]["maxTokens"] == 512
    # the status is whatever the operator writes; the gateway shows the CR as it is
    got = gateway.get("/v1/tasks/tuples", headers=as_user("bob-token"))
    assert got.status_code == 200 and got.json()["metadata"]["uid"] == stored["metadata"]["uid"]
    assert [
        t["metadata"]["name"] for t in gateway.get("/v1/tasks", headers=as_user("bob-token")).json()["items"]
    ] == ["tuples"]
    dup = gateway.post("/v1/tasks", json=TASK, headers=as_user("alice-token"))
    assert dup.status_code == 409
    assert gateway.get("/v1/tasks/nope", headers=as_user("alice-token")).status_code == 404
    assert gateway.delete("/v1/tasks/tuples", headers=as_user("alice-token")).status_code == 200
    assert cluster.names("taskorchestrations") == []


def test_the_callers_own_rbac_decides(gateway: TestClient, cluster: ApiServer) -> None:
    REVIEWS.clear()
    denied = gateway.post("/v1/tasks", json=TASK, headers=as_user("bob-token"))
    assert denied.status_code == 403
    assert (
        denied.json()["message"]
        == 'bob cannot create taskorchestrations in namespace "default": no RBAC policy matched'
    )
    assert REVIEWS[-1] == {
        "user": "bob", "groups": ["viewers"],
        "resourceAttributes": {"group": "ai.stack", "resource": "taskorchestrations", "verb": "create", "namespace": "default"},
    }  # fmt: skip
    other_ns = gateway.get("/v1/tasks?namespace=prod", headers=as_user("alice-token"))
    assert other_ns.status_code == 403 and 'namespace "prod"' in other_ns.json()["message"]
    assert gateway.post("/v1/tasks", json=TASK).status_code == 401
    bad = gateway.post("/v1/tasks", json=TASK, headers=as_user("stolen-token"))
    assert bad.status_code == 401 and "invalid bearer token" in bad.json()["message"]
    assert gateway.delete("/v1/tasks/tuples", headers=as_user("bob-token")).status_code == 403
    assert cluster.names("taskorchestrations") == [], "nothing was created"


def test_ready_agents_answer(gateway: TestClient, cluster: ApiServer) -> None:
    from kubernetes import client, config

    api = client.CustomObjectsApi(config.new_client_from_config(str(cluster.kubeconfig)))

    def agent(name: str, endpoint: str, ready: bool) -> None:
        body = {"apiVersion": "ai.stack/v1alpha1", "kind": "OllamaAgent", "metadata": {"name": name},
                "spec": {"model": "aistack-extractive", "role": "summarizer", "endpoint": endpoint},
                "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}  # fmt: skip
        api.create_namespaced_custom_object("ai.stack", "v1alpha1", "default", "ollamaagents", body)

    agent("digest", "/summarize", ready=True)
    agent("pulling", "/pulling", ready=False)
    listed = gateway.get("/v1/agents", headers=as_user("bob-token")).json()["items"]
    assert [(a["name"], a["available"]) for a in listed] == [("digest", True)]
    r = gateway.post("/summarize", json={"text": CONTEXT}, headers=as_user("alice-token"))
    assert r.status_code == 200 and r.json()["agent"] == "digest", r.text
    assert REVIEWS[-1]["resourceAttributes"] == {
        "group": "ai.stack", "resource": "ollamaagents", "subresource": "invoke", "verb": "create",
        "namespace": "default", "name": "digest",
    }  # fmt: skip
    refused = gateway.post(
        "/v1/agents/digest/summarize", json={"text": CONTEXT}, headers=as_user("bob-token")
    )
    assert (
        refused.status_code == 403
        and "bob cannot create ollamaagents/invoke 'digest'" in refused.json()["message"]
    )
    assert gateway.post("/pulling", json={"text": CONTEXT}, headers=as_user("alice-token")).status_code == 404
    assert gateway.get("/readyz").json() == {"status": "ready"}


def test_gateway_rbac_is_what_its_code_calls() -> None:
    """The gateway's ClusterRole grants exactly the API calls in its code, found by name."""
    import re

    import yaml
    from conftest import ROOT

    calls = set()
    for module, group_of in (("tasks", "taskorchestrations"), ("agents", "ollamaagents"), ("auth", None)):
        code = (ROOT / "aistack" / "gateway" / f"{module}.py").read_text()
        for verb in re.findall(r"\.(create|get|list|delete)_namespaced_custom_object\(", code):
            calls.add(("ai.stack", group_of, verb))
        if "create_token_review(" in code:
            calls.add(("authentication.k8s.io", "tokenreviews", "create"))
        if "create_subject_access_review(" in code:
            calls.add(("authorization.k8s.io", "subjectaccessreviews", "create"))
    role = next(
        d
        for d in yaml.safe_load_all((ROOT / "infra/base/gateway/rbac.yaml").read_text())
        if d["metadata"]["name"] == "aistack-gateway" and d["kind"] == "ClusterRole"
    )
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert granted == calls
    assert len(calls) == 7  # two reviews, four task verbs, listing agents


def test_finished_tasks_show_their_results_from_s3(gateway: TestClient, cluster: ApiServer, s3: Any) -> None:
    """The operator's status names the published run; the gateway adds its first answers, read
    from summary.json over S3 (boto3 against the local S3 server), or says why it cannot."""
    import json

    from kubernetes import client, config

    run = f"s3://{s3.bucket}/answers/run-1"
    s3.put_object(
        Bucket=s3.bucket,
        Key="answers/run-1/summary.json",
        Body=json.dumps({"outputs": ["Tuples are immutable."]}),
    )
    api = client.CustomObjectsApi(config.new_client_from_config(str(cluster.kubeconfig)))
    for name, outputs in (("done", run), ("lost", f"s3://{s3.bucket}/answers/missing")):
        body = {"apiVersion": "ai.stack/v1alpha1", "kind": "TaskOrchestration", "metadata": {"name": name},
                "spec": TASK["spec"], "status": {"phase": "Succeeded", "outputs": outputs}}  # fmt: skip
        api.create_namespaced_custom_object("ai.stack", "v1alpha1", "default", "taskorchestrations", body)
    done = gateway.get("/v1/tasks/done", headers=as_user("bob-token")).json()
    assert done["results"] == {"uri": run, "outputs": ["Tuples are immutable."]}
    lost = gateway.get("/v1/tasks/lost", headers=as_user("bob-token"))
    assert lost.status_code == 200 and "cannot read" in lost.json()["results"]["error"]


def test_auth_caches_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many distinct callers or task names cannot grow the review caches without end."""
    import time

    from aistack.gateway import auth

    monkeypatch.setattr(auth, "CACHE_LIMIT", 10)
    cache: dict[Any, Any] = {}
    for i in range(10):
        auth._remember(cache, i, (time.monotonic() - 1, "expired"))
    auth._remember(cache, "new", (time.monotonic() + 30, "fresh"))
    assert list(cache) == ["new"], "expired entries went first"
    for i in range(20):
        auth._remember(cache, i, (time.monotonic() + 30, "fresh"))
    assert len(cache) <= 10
