"""The gateway refuses before it reads: authentication and authorization come before the body
is parsed (every route, local and cluster mode), and a task may read input only from where the
gateway's operator allowed (`--input-root`, `--input-bucket`); `include` never leaves its dataset."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from kube import OPERATOR_RESOURCES, ApiServer
from test_gateway import AUTH, TASK, make_app, wait_for
from test_gateway_cluster import AuthEmulator, as_user

from aistack.gateway.routing import OPEN, GuardedRoute
from aistack.gateway.server import build_app
from aistack.gateway.settings import GatewaySettings
from aistack.inputs import InputPolicy, InputRefused
from aistack.pipelines.runtime import DATASETS_DIR
from aistack.steps.model_server import EmbeddedModelServer

MALFORMED = b'{"spec": [unterminated'
INVALID = {"metadata": {"name": "Not_A_Name"}, "spec": "not an object", "text": ""}


@pytest.fixture(scope="module")
def model_host() -> Iterator[str]:
    server = EmbeddedModelServer(models=["aistack-extractive"], parallel=4)
    yield server.start()
    server.stop()


@pytest.fixture
def local(
    tmp_path: Path, corpus: Path, model_host: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv("OLLAMA_HOST", model_host)
    with TestClient(make_app(tmp_path, input_roots=(corpus,))) as c:
        yield c


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """An allowed input root with a document, a symlink out of it, and a secret outside it."""
    root = tmp_path / "corpus"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "tuples.txt").write_text("Tuples are immutable sequences. " * 20)
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key.txt").write_text("the secret")
    os.symlink(tmp_path / "secret", root / "escape")
    return root


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, concrete path) the app serves, but the open ones."""
    found = []
    for route in app.routes:
        if isinstance(route, APIRoute) and route.endpoint.guard != OPEN:  # type: ignore[attr-defined]
            path = route.path_format.replace("{name}", "tuples").replace("{agent}", "qna-agent")
            path = path.replace("/{endpoint}", "/answer")
            found += [(method, path) for method in route.methods]
    return found


def unauthenticated_requests(app: FastAPI) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for method, path in routes(app):
        yield method, path, {}
        yield method, f"{path}?namespace=Not_A_Namespace", {}
        if method == "POST":
            yield method, path, {"content": MALFORMED, "headers": {"content-type": "application/json"}}
            yield method, path, {"json": INVALID}


def test_every_route_authenticates_before_reading_the_request(local: TestClient) -> None:
    seen = set()
    for method, path, kwargs in unauthenticated_requests(local.app):  # type: ignore[arg-type]
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = local.request(method, path, **{**kwargs, "headers": {**kwargs.get("headers", {}), **headers}})
            assert r.status_code == 401, (method, path, kwargs, r.text)
            assert r.json()["reason"] == "Unauthorized" and r.json()["details"] == []
            seen.add((method, path.split("?")[0]))
    assert {("POST", "/v1/tasks"), ("DELETE", "/v1/tasks/tuples"), ("POST", "/answer")} <= seen
    # authenticated, the same malformed body is reported as what it is
    r = local.post("/v1/tasks", content=MALFORMED, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["details"] == ["body: not valid JSON at character 10 (Expecting value)"]
    assert (
        r.json()["message"]
        == "the request is invalid: body: not valid JSON at character 10 (Expecting value)"
    )


def test_without_a_token_anonymous_writes_are_refused_before_the_body(tmp_path: Path, model_host: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("OLLAMA_HOST", model_host)
    with TestClient(make_app(tmp_path, token=None)) as c:
        for method, path in routes(c.app):  # type: ignore[arg-type]
            if method == "GET":
                continue  # reads are open without a token
            for body in ({"content": MALFORMED}, {"json": INVALID}):
                r = c.request(method, path, **body, headers={"content-type": "application/json"})
                assert r.status_code == 401 and "anonymous writes are refused" in r.json()["message"], path
        # nor does an anonymous caller learn which agents exist, or get past a bad namespace
        for path in ("/translate", "/v1/agents/ghost/answer", "/answer?namespace=Not_A_Namespace"):
            r = c.post(path, content=MALFORMED, headers={"content-type": "application/json"})
            assert r.status_code == 401, (path, r.text)
        # an open read with a bad query is a validation error, one line naming the parameter
        r = c.get("/v1/tasks?namespace=Not_A_Namespace")
        assert r.status_code == 422
        assert r.json()["details"] == [
            "query.namespace: String should match pattern '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"
        ]


def test_cluster_mode_authenticates_and_authorizes_before_the_body(tmp_path: Path, model_host: str) -> None:
    with ApiServer(tmp_path, OPERATOR_RESOURCES, AuthEmulator) as cluster:
        settings = GatewaySettings(mode="cluster", kubeconfig=str(cluster.kubeconfig), ollama_host=model_host)
        app, _ = build_app(settings)
        with TestClient(app) as c:
            for method, path, kwargs in unauthenticated_requests(app):
                r = c.request(method, path, **kwargs)
                assert r.status_code == 401, (method, path, r.text)
            json_header = {"content-type": "application/json"}
            # bob may read but not write: 403 before his malformed body is looked at, as the API server does
            for method, path in (("POST", "/v1/tasks"), ("DELETE", "/v1/tasks/tuples"),
                                 ("POST", "/v1/agents/digest/summarize"), ("POST", "/summarize")):  # fmt: skip
                r = c.request(
                    method, path, content=MALFORMED, headers={**as_user("bob-token"), **json_header}
                )
                assert r.status_code == 403 and r.json()["message"].startswith("bob cannot"), r.text
            r = c.post("/v1/tasks", content=MALFORMED, headers={**as_user("alice-token"), **json_header})
            assert r.status_code == 422 and r.json()["details"][0].startswith("body: not valid JSON")
            assert cluster.names("taskorchestrations") == []


def test_a_route_without_a_guard_cannot_be_added() -> None:
    app = FastAPI()
    app.router.route_class = GuardedRoute
    with pytest.raises(TypeError, match=r"route /forgotten declares no guard"):

        @app.get("/forgotten")
        async def forgotten() -> None: ...


def submit(c: TestClient, name: str, task_input: dict[str, Any]) -> Any:
    task = copy.deepcopy(TASK)
    task["metadata"]["name"] = name
    del task["spec"]["inputText"]
    task["spec"]["input"] = task_input
    return c.post("/v1/tasks", json=task, headers=AUTH)


def test_traversal_through_include_and_uri_is_refused(
    local: TestClient, tmp_path: Path, corpus: Path
) -> None:
    secret = tmp_path / "secret" / "key.txt"
    refused = {
        "dotdot-include": ({"dataset": "python-docs", "include": "../../../" + str(secret)}, 422,
                           "spec.input.include: '../../../"),
        "inner-dotdot": ({"dataset": "python-docs", "include": "tutorial/../../x"}, 422, "has a '..' segment"),
        "file-uri": ({"uri": secret.as_uri()}, 403, f"spec.input.uri: {secret.as_uri()} is outside this gateway's input roots ({corpus})"),
        "dotdot-uri": ({"uri": f"{corpus.as_uri()}/../secret"}, 422, "spec.input.uri: "),
        "encoded-dotdot": ({"uri": f"{corpus.as_uri()}/%2e%2e/secret/key.txt"}, 422, "has a '..' segment"),
        "symlink-uri": ({"uri": (corpus / "escape").as_uri()}, 403, "is outside this gateway's input roots"),
        "symlink-include": ({"uri": corpus.as_uri(), "include": "escape/key.txt"}, 422,
                            "spec.input.include: 'escape/key.txt' leads out of the dataset through a symlink"),
        "glob-root": ({"uri": "file:///*"}, 403, "is outside"),
        "host": ({"uri": "file://otherhost/etc/passwd"}, 422, "names a host"),
    }  # fmt: skip
    for name, (task_input, code, message) in refused.items():
        r = submit(local, name, task_input)
        assert r.status_code == code, (name, r.text)
        body = r.json()
        assert message in body["message"] and "\n" not in body["message"], (name, body)
        assert body["reason"] == ("Forbidden" if code == 403 else "Invalid")
    assert local.get("/v1/tasks", headers=AUTH).json()["items"] == [], "nothing refused was created"


def test_inputs_inside_the_allowed_places_are_read(local: TestClient, corpus: Path) -> None:
    r = submit(local, "bundled", {"dataset": "python-docs", "include": "tutorial/datastructures.html"})
    assert r.status_code == 201, r.text
    r = submit(local, "mine", {"uri": corpus.as_uri(), "include": "docs/*.txt"})
    assert r.status_code == 201, r.text
    for name in ("bundled", "mine"):
        status = wait_for(local, name)
        assert status["phase"] == "Succeeded", status
    assert "immutable" in local.get("/v1/tasks/mine", headers=AUTH).json()["status"]["outputs"]["results"][0]


def test_the_default_allows_the_bundled_datasets_and_nothing_else(tmp_path: Path) -> None:
    policy = InputPolicy.allowing((), (), DATASETS_DIR, resolve=True)
    assert policy.roots == (DATASETS_DIR.resolve(),)
    policy.check({"uri": (DATASETS_DIR / "python-docs").as_uri()})
    policy.check({"uri": "s3://any-bucket/corpus/"})  # S3 reads are bounded by the gateway's own IAM role
    with pytest.raises(InputRefused, match=r"^spec.input.uri: file:///etc/passwd is outside") as refused:
        policy.check({"uri": "file:///etc/passwd"})
    assert refused.value.policy
    buckets = InputPolicy.allowing((), ("corpora",), DATASETS_DIR, resolve=True)
    buckets.check({"uri": "s3://corpora/x/"})
    with pytest.raises(
        InputRefused, match=r"bucket 'private' is not one this gateway reads \(--input-bucket: corpora\)"
    ):
        buckets.check({"uri": "s3://private/x/"})
    with pytest.raises(ValueError, match=r"--input-root .*nowhere: not a directory"):
        InputPolicy.allowing((tmp_path / "nowhere",), (), DATASETS_DIR, resolve=True)
    # cluster mode: the roots are on the workflow pods' disks (a volume the gateway has not mounted)
    pods = InputPolicy.allowing((Path("/mnt/corpora"),), (), DATASETS_DIR, resolve=False)
    pods.check({"uri": "file:///mnt/corpora/2026/", "include": "*.jsonl"})
    with pytest.raises(InputRefused, match=r"^spec.input.uri: file:///mnt/other is outside"):
        pods.check({"uri": "file:///mnt/other"})
    with pytest.raises(ValueError, match=r"--input-root corpora: give an absolute path"):
        InputPolicy.allowing((Path("corpora"),), (), DATASETS_DIR, resolve=False)


def test_cluster_mode_checks_file_uris_and_buckets(tmp_path: Path, model_host: str) -> None:
    with ApiServer(tmp_path, OPERATOR_RESOURCES, AuthEmulator) as cluster:
        settings = GatewaySettings(mode="cluster", kubeconfig=str(cluster.kubeconfig), ollama_host=model_host,
                                   input_buckets=("corpora",))  # fmt: skip
        app, _ = build_app(settings)
        alice = as_user("alice-token")
        with TestClient(app) as c:
            cases = {
                "pod-disk": ({"uri": "file:///var/run/secrets/kubernetes.io/serviceaccount/token"}, 403),
                "other-bucket": ({"uri": "s3://someone-elses/data/"}, 403),
                "escape": ({"uri": "s3://corpora/data/", "include": "../other/*"}, 422),
                "fine": ({"uri": "s3://corpora/data/", "include": "2026/*.jsonl"}, 201),
                "bundled": ({"dataset": "python-docs", "include": "faq/*.html"}, 201),
            }
            for name, (task_input, code) in cases.items():
                task = copy.deepcopy(TASK)
                task["metadata"]["name"] = name
                del task["spec"]["inputText"]
                task["spec"]["input"] = task_input
                r = c.post("/v1/tasks", json=task, headers=alice)
                assert r.status_code == code, (name, r.text)
            assert sorted(cluster.names("taskorchestrations")) == ["bundled", "fine"]


def test_a_cache_outside_the_gateways_out_is_refused(local: TestClient, tmp_path: Path) -> None:
    out = (tmp_path / "out").as_uri()  # make_app's --out
    elsewhere = (tmp_path / "elsewhere").as_uri()
    # the second reads as under --out, but storage decodes it to a place outside
    for name, uri in (("plain", elsewhere), ("encoded", f"{out}/%2e%2e/%2e%2e/elsewhere")):
        task = copy.deepcopy(TASK)
        task["metadata"]["name"] = name
        task["spec"]["cache"] = {"uri": uri}
        r = local.post("/v1/tasks", json=task, headers=AUTH)
        assert r.status_code == 403 and r.json()["message"].startswith("spec.cache.uri: file://"), (
            name,
            r.text,
        )
