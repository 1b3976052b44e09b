"""`aistack doctor` against the API-server stand-in: a cluster with everything a task needs passes
every line; each missing piece fails (or warns on) exactly its own line, with its fix."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kmock
import kubernetes
import pytest
import yaml
from aiohttp import web
from conftest import ROOT
from kube import ApiServer, Emulator
from typer.testing import CliRunner

from aistack.cli import app
from aistack.crds.schema import crd
from aistack.crds.validation import load_file, parse
from aistack.doctor import FAIL, OK, WARN, Options, diagnose

NS = "aistack"
OPERATOR = "system:serviceaccount:aistack-system:aistack-operator"
SEED = load_file(ROOT / "crds" / "examples" / "seed.yaml")


def operator_grants() -> set[tuple[str, str, str]]:
    """What infra/base/operator/rbac.yaml's ClusterRole grants: the stand-in's RBAC for the operator."""
    role = next(
        d
        for d in yaml.safe_load_all((ROOT / "infra" / "base" / "operator" / "rbac.yaml").read_text())
        if d["kind"] == "ClusterRole"
    )
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


class RbacEmulator(Emulator):
    """SelfSubjectAccessReview, as the caller or impersonating a user, decided from `grants`."""

    grants: dict[str, set[tuple[str, str, str]]]
    may_impersonate = True

    async def _handle(self, request: kmock.Request) -> Any:
        if request.url.path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
            user = request.headers.get("Impersonate-User")
            if user and not self.may_impersonate:
                return web.json_response(status=403, data={
                    "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403, "reason": "Forbidden",
                    "message": f'users "{user}" is forbidden: User "me" cannot impersonate resource "users"'})  # fmt: skip
            attrs = request.data["spec"]["resourceAttributes"]
            resource = attrs["resource"] + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
            allowed = (attrs.get("group", ""), resource, attrs["verb"]) in self.grants.get(
                user or "me", set()
            )
            return web.json_response(status=201, data={
                "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": request.data["spec"], "status": {"allowed": allowed}})  # fmt: skip
        return await super()._handle(request)


def _crd(group: str, plural: str, kind: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "scope": "Namespaced", "names": {"plural": plural, "kind": kind},
                 "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    }  # fmt: skip


class Cluster:
    def __init__(self, api: ApiServer) -> None:
        self.api = api
        client = kubernetes.config.new_client_from_config(str(api.kubeconfig))
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)
        self.apps = kubernetes.client.AppsV1Api(client)

    def set_status(self, plural: str, namespace: str | None, name: str, status: dict[str, Any]) -> None:
        """What a controller (kubelet, scheduler, Deployment controller) would write."""
        assert self.api.emulator is not None
        key = next(
            k
            for k in self.api.emulator.objects
            if k[0].plural == plural and k[1] == namespace and k[2] == name
        )
        self.api.emulator.objects[key].patch({"status": status})

    def deployment(self, namespace: str, name: str, ready: int) -> None:
        labels = {"app": name}
        self.apps.create_namespaced_deployment(namespace, {
            "metadata": {"name": name}, "spec": {"selector": {"matchLabels": labels}, "template": {
                "metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}})  # fmt: skip
        self.set_status("deployments", namespace, name, {"readyReplicas": ready, "replicas": 1})

    def build_healthy(self) -> None:
        for kind in ("OllamaAgent", "TaskOrchestration"):
            self.custom.create_cluster_custom_object(
                "apiextensions.k8s.io", "v1", "customresourcedefinitions", crd(kind)
            )
        for plural, kind in (("workflows", "Workflow"), ("cronworkflows", "CronWorkflow")):
            self.custom.create_cluster_custom_object(
                "apiextensions.k8s.io", "v1", "customresourcedefinitions", _crd("argoproj.io", plural, kind)
            )
        for ns in ("argo", NS, "aistack-system"):
            self.core.create_namespace({"metadata": {"name": ns}})
        self.deployment("argo", "argo-workflows-workflow-controller", ready=1)
        self.deployment("aistack-system", "aistack-operator", ready=1)
        self.core.create_namespaced_service_account(NS, {"metadata": {"name": "aistack-workflow"}})
        self.core.create_namespaced_config_map(
            NS, {"metadata": {"name": "artifact-repositories"}, "data": {"aistack-s3": "s3: {bucket: b}"}}
        )
        self.core.create_namespaced_persistent_volume_claim(NS, {
            "metadata": {"name": "aistack-model-cache"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "100Gi"}}}})  # fmt: skip
        self.set_status("persistentvolumeclaims", NS, "aistack-model-cache", {"phase": "Bound"})
        self.core.create_node({"metadata": {"name": "gpu-1", "labels": {"nvidia.com/gpu.present": "true"}},
                               "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]}})  # fmt: skip
        self.set_status("nodes", None, "gpu-1", {"allocatable": {"nvidia.com/gpu": "4", "cpu": "8"}})
        for agent in (d for d in SEED if d["kind"] == "OllamaAgent"):
            self.custom.create_namespaced_custom_object("ai.stack", "v1alpha1", NS, "ollamaagents", agent)
            self.custom.patch_namespaced_custom_object_status(
                "ai.stack", "v1alpha1", NS, "ollamaagents", agent["metadata"]["name"],
                {"status": {"phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}]}},
            )  # fmt: skip
        assert self.api.emulator is not None
        self.api.emulator.grants = {OPERATOR: operator_grants()}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with ApiServer(tmp_path, [], RbacEmulator) as api:
        c = Cluster(api)
        c.build_healthy()
        yield c


def options() -> Options:
    docs = [parse(d) for d in SEED]
    task = next(d for d in docs if d.kind == "TaskOrchestration")
    return Options(
        namespace=NS, task=task, agents={d.metadata.name: d for d in docs if d.kind == "OllamaAgent"}
    )  # type: ignore[misc]


def by_check(cluster: Cluster) -> dict[str, tuple[str, str, str]]:
    return {f.check: (f.status, f.found, f.fix) for f in diagnose(str(cluster.api.kubeconfig), options())}


def test_a_cluster_with_everything_passes_every_line(cluster: Cluster, tmp_path: Path) -> None:
    lines = by_check(cluster)
    assert {check: status for check, (status, _, _) in lines.items() if status != OK} == {}
    assert set(lines) == set(HEALTHY_LINES)
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump_all(SEED))
    shown = CliRunner().invoke(
        app,
        ["doctor", "-n", NS, "--task", str(task), "--kubeconfig", str(cluster.api.kubeconfig)],
        env={"COLUMNS": "250"},
    )
    assert shown.exit_code == 0, shown.output
    assert "0 problem(s), 0 warning(s)" in shown.output and "operator RBAC" in shown.output
    assert "[green]" not in shown.output and "[/]" not in shown.output, "status styled, not markup"


HEALTHY_LINES = [
    "CRD ollamaagents.ai.stack", "CRD taskorchestrations.ai.stack", "Argo CRD workflows.argoproj.io",
    "Argo CRD cronworkflows.argoproj.io", "Argo controller", f"ServiceAccount {NS}/aistack-workflow",
    f"artifact repository {NS}/artifact-repositories:aistack-s3", f"model cache {NS}/aistack-model-cache",
    "GPU nodes", "GPU node label", "GPU node taints", "operator", "operator RBAC",
    f"OllamaAgent {NS}/qna-agent", f"OllamaAgent {NS}/summarizer-agent",
]  # fmt: skip


def _delete_crd(name: str) -> Callable[[Cluster], None]:
    return lambda c: c.custom.delete_cluster_custom_object(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions", name
    )


def _old_schema(c: Cluster) -> None:
    old = copy.deepcopy(crd("TaskOrchestration"))
    del old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["cache"]
    c.custom.delete_cluster_custom_object(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions", old["metadata"]["name"]
    )
    c.custom.create_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", old)


def _no_gpu(c: Cluster) -> None:
    c.core.delete_node("gpu-1")


def _relabel(c: Cluster) -> None:
    c.core.patch_node("gpu-1", {"metadata": {"labels": {"nvidia.com/gpu.present": None}}})


def _other_taint(c: Cluster) -> None:
    c.core.patch_node(
        "gpu-1", {"spec": {"taints": [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]}}
    )


def _revoke_finalizers(c: Cluster) -> None:
    assert c.api.emulator is not None
    c.api.emulator.grants[OPERATOR].discard(("ai.stack", "taskorchestrations/finalizers", "update"))


def _no_impersonation(c: Cluster) -> None:
    assert c.api.emulator is not None
    c.api.emulator.may_impersonate = False


def _agent_not_ready(c: Cluster) -> None:
    c.custom.patch_namespaced_custom_object_status(
        "ai.stack", "v1alpha1", NS, "ollamaagents", "qna-agent",
        {"status": {"phase": "Pulling", "message": "Deployment qna-agent-ollama pulling llama3",
                    "conditions": [{"type": "Ready", "status": "False"}]}},
    )  # fmt: skip


# (what is broken, the line, its status, words of what it found, words of the fix)
MISSING: list[tuple[Callable[[Cluster], None], str, str, str, str]] = [
    (_delete_crd("taskorchestrations.ai.stack"), "CRD taskorchestrations.ai.stack", FAIL, "not installed", "kubectl apply -f crds/"),
    (_old_schema, "CRD taskorchestrations.ai.stack", FAIL, "another aistack version", "kubectl apply -f crds/"),
    (_delete_crd("ollamaagents.ai.stack"), "CRD ollamaagents.ai.stack", FAIL, "not installed", "kubectl apply -f crds/"),
    (_delete_crd("cronworkflows.argoproj.io"), "Argo CRD cronworkflows.argoproj.io", FAIL, "not installed", "argo-workflows"),
    (_delete_crd("workflows.argoproj.io"), "Argo CRD workflows.argoproj.io", FAIL, "not installed", "infra/base/argo-workflows"),
    (lambda c: c.set_status("deployments", "argo", "argo-workflows-workflow-controller", {"readyReplicas": 0}),
     "Argo controller", FAIL, "no ready replica", "describe deployment"),
    (lambda c: c.core.delete_namespaced_service_account("aistack-workflow", NS),
     f"ServiceAccount {NS}/aistack-workflow", FAIL, "missing", "controllers"),
    (lambda c: c.core.delete_namespaced_config_map("artifact-repositories", NS),
     f"artifact repository {NS}/artifact-repositories:aistack-s3", FAIL, "ConfigMap missing", "controllers"),
    (lambda c: c.set_status("persistentvolumeclaims", NS, "aistack-model-cache", {"phase": "Pending"}),
     f"model cache {NS}/aistack-model-cache", FAIL, "Pending, not Bound", "describe pvc aistack-model-cache"),
    (_no_gpu, "GPU nodes", WARN, "no node has allocatable nvidia.com/gpu", "scales from zero"),
    (_relabel, "GPU node label", FAIL, "gpu-1 lack nvidia.com/gpu.present=true", "kubectl label node gpu-1"),
    (_other_taint, "GPU node taints", FAIL, "do not tolerate gpu-1 (dedicated:NoSchedule)", "spec.tolerations"),
    (lambda c: c.apps.delete_namespaced_deployment("aistack-operator", "aistack-system"),
     "operator", FAIL, "no Deployment aistack-system/aistack-operator", "infra/base/operator"),
    (_revoke_finalizers, "operator RBAC", FAIL, "may not: update taskorchestrations/finalizers.ai.stack", "infra/base/operator"),
    (_no_impersonation, "operator RBAC", WARN, "may not impersonate", "cluster admin"),
    (lambda c: c.custom.delete_namespaced_custom_object("ai.stack", "v1alpha1", NS, "ollamaagents", "qna-agent"),
     f"OllamaAgent {NS}/qna-agent", FAIL, "missing", "apply -f agents.yaml"),
    (_agent_not_ready, f"OllamaAgent {NS}/qna-agent", FAIL, "not Ready: Deployment qna-agent-ollama pulling llama3", "describe oagent qna-agent"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("breaks", "line", "status", "found", "fix"), MISSING, ids=[f"{m[1]}: {m[3]}"[:70] for m in MISSING]
)
def test_each_missing_piece_is_its_own_line_with_a_fix(
    cluster: Cluster, breaks: Callable[[Cluster], None], line: str, status: str, found: str, fix: str
) -> None:
    breaks(cluster)
    lines = by_check(cluster)
    assert lines[line][0] == status and found in lines[line][1] and fix in lines[line][2], lines[line]
    others = {check: s for check, (s, _, _) in lines.items() if check != line and s != OK}
    assert others == {}, "only the broken piece's line changes"


def test_every_line_has_a_case() -> None:
    assert {m[1] for m in MISSING} == set(HEALTHY_LINES) - {f"OllamaAgent {NS}/summarizer-agent"}


def test_the_command_exits_1_and_prints_the_fix(cluster: Cluster) -> None:
    cluster.core.delete_namespaced_service_account("aistack-workflow", NS)
    shown = CliRunner().invoke(
        app, ["doctor", "-n", NS, "--kubeconfig", str(cluster.api.kubeconfig)], env={"COLUMNS": "250"}
    )
    assert shown.exit_code == 1
    assert "FAIL" in shown.output and "workflow-rbac.yaml" in shown.output and "1 problem(s)" in shown.output
    assert "[bold red]" not in shown.output and "\\" not in shown.output, "printed as written"
