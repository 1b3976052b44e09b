"""The README's cluster commands, exactly as written, with the real kubectl against the API-server
stand-in (tests/kube.py), block by block and in order. The stand-in refuses what a real server
refuses: a kind with no CRD ("no matches for kind"), an object in a namespace that does not
exist. Where a README line is not kubectl (kind, docker, flux), the harness does what that tool
would do to the API server, and says so here; nothing else is skipped."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from conftest import ROOT
from infra_tools import kustomize, tool
from kube import ApiServer

README = (ROOT / "README.md").read_text()
# what `flux install` brings: the kinds of Flux's own CRDs
FLUX_KINDS = {
    "helm.toolkit.fluxcd.io/v2/helmreleases": "HelmRelease",
    "source.toolkit.fluxcd.io/v1/helmrepositories": "HelmRepository",
    "source.toolkit.fluxcd.io/v1/gitrepositories": "GitRepository",
    "kustomize.toolkit.fluxcd.io/v1/kustomizations": "Kustomization",
}
# what each chart installs once its HelmRelease is Ready (the kinds later layers use)
CHART_KINDS = {
    "kube-prometheus-stack": {
        "monitoring.coreos.com/v1/servicemonitors": "ServiceMonitor",
        "monitoring.coreos.com/v1/podmonitors": "PodMonitor",
        "monitoring.coreos.com/v1/prometheusrules": "PrometheusRule",
    },
    "argo-workflows": {
        "argoproj.io/v1alpha1/workflows": "Workflow",
        "argoproj.io/v1alpha1/cronworkflows": "CronWorkflow",
        "argoproj.io/v1alpha1/workflowtemplates": "WorkflowTemplate",
    },
}
NOT_KUBERNETES = ("kind ", "docker ", "cd ", "terraform ", "aws ", "flux bootstrap", "flux get")


def bash_blocks(markdown: str) -> list[list[str]]:
    """The command lines of every ```bash block (comments and continuations folded)."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        lines = []
        for raw in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", raw).strip()
            if line and not line.startswith("#"):
                lines.append(line)
        blocks.append(lines)
    return blocks


def block_with(line: str) -> list[str]:
    found = [b for b in bash_blocks(README) if line in b]
    assert len(found) == 1, f"the README has one block with {line!r}"
    return found[0]


def register(api: ApiServer, kinds: dict[str, str]) -> None:
    assert api.emulator is not None
    for resource, kind in kinds.items():
        api.emulator.resources[resource] = kmock.ResourceInfo(
            namespaced=True, kind=kind, singular=kind.lower(),
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"}, subresources={"status"},
        )  # fmt: skip


def flux_reconciles(api: ApiServer, namespace: str, release: str) -> None:
    """What helm-controller does before `kubectl wait helmrelease/...` returns: the release is
    installed (its chart's kinds are served) and Ready."""
    assert api.emulator is not None
    key = (kmock.resource("helm.toolkit.fluxcd.io/v2/helmreleases"), namespace, release)
    assert key in api.emulator.objects, f"HelmRelease {namespace}/{release} was never applied"
    api.emulator.objects[key].patch(
        {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "InstallSucceeded",
                                    "message": "Helm install succeeded", "lastTransitionTime": "2026-12-01T00:00:00Z"}]}}
    )  # fmt: skip
    register(api, CHART_KINDS.get(release, {}))


class Shell:
    """Runs README lines as a user's shell would, KUBECONFIG pointing at the stand-in."""

    def __init__(self, api: ApiServer) -> None:
        self.api = api
        self.env = {
            **os.environ,
            "KUBECONFIG": str(api.kubeconfig),
            "PATH": f"{tool('kubectl').parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.done: list[str] = []

    def run(self, line: str) -> subprocess.CompletedProcess[str]:
        words = shlex.split(line)
        if line == "flux install":  # Flux's namespace, CRDs and controllers
            assert self.api.emulator is not None
            self.api.emulator.objects[kmock.resource(group="", version="v1", plural="namespaces"), None, "flux-system"] = {
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}}  # fmt: skip
            register(self.api, FLUX_KINDS)
            return subprocess.CompletedProcess(words, 0, "", "")
        if line.startswith(NOT_KUBERNETES):
            return subprocess.CompletedProcess(words, 0, "", "")  # talks to Docker, kind or a cloud
        assert words[0] == "kubectl", f"unexpected README command {line!r}"
        if "wait" in words and any(w.startswith("helmrelease/") for w in words):
            namespace = words[words.index("-n") + 1]
            release = next(w for w in words if w.startswith("helmrelease/")).split("/", 1)[1]
            flux_reconciles(self.api, namespace, release)
        done = subprocess.run(
            words, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        self.done.append(line)
        return done

    def sent_kustomizations(self) -> list[str]:
        """Kustomize's own files that reached the server as objects (kubectl apply -f on them)."""
        assert self.api.emulator is not None
        return [
            path
            for _, path, body in self.api.emulator.writes
            if isinstance(body, dict)
            and str(body.get("apiVersion", "")).startswith("kustomize.config.k8s.io")
        ]


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    with ApiServer(tmp_path, []) as api:
        yield Shell(api)


def stored(api: ApiServer) -> set[tuple[str, str | None, str]]:
    assert api.emulator is not None
    return {(key[0].plural, key[1], key[2]) for key, obj in api.emulator.objects.items() if not obj.deleted}


def built(directory: Path) -> set[tuple[str, str | None, str]]:
    out = set()
    for obj in kustomize(directory):
        kind = obj["kind"].lower()
        plural = kind[:-1] + "ies" if kind.endswith("y") else kind + ("es" if kind.endswith("s") else "s")
        out.add((plural, obj["metadata"].get("namespace"), obj["metadata"]["name"]))
    return out


def test_both_ways_to_apply_the_crds(shell: Shell) -> None:
    block = block_with("kubectl apply -k crds/")
    assert block == ["kubectl apply -f crds/", "kubectl apply -k crds/"]
    for line in block:
        done = shell.run(line)
        assert done.returncode == 0, f"{line}: {done.stderr}"
    assert shell.sent_kustomizations() == [], "a kustomization file was sent as an object"
    assert {n for p, _, n in stored(shell.api) if p == "customresourcedefinitions"} == {
        "ollamaagents.ai.stack",
        "taskorchestrations.ai.stack",
    }


def test_the_operator_alone_in_the_readmes_order(shell: Shell) -> None:
    block = block_with("kubectl apply -k infra/base/operator")
    assert block[0] == "kubectl apply -f crds/" and block[1] == "kubectl apply -k infra/base/namespaces"
    for line in block:
        done = shell.run(line)
        assert done.returncode == 0, f"{line}: {done.stderr}"
    have = stored(shell.api)
    for part in ("namespaces", "operator", "gateway"):
        missing = built(ROOT / "infra" / "base" / part) - have
        assert not missing, f"{part}: {sorted(missing)}"
    assert shell.sent_kustomizations() == []


def test_the_operator_before_its_namespace_is_refused_as_a_real_server_would(shell: Shell) -> None:
    """Why the README's order matters: the stand-in refuses it the way kube-apiserver did."""
    done = shell.run("kubectl apply -k infra/base/operator")
    assert done.returncode == 1 and 'namespaces "aistack-system" not found' in done.stderr


def test_the_dev_cluster_by_hand(shell: Shell) -> None:
    block = block_with("kubectl apply -k infra/overlays/dev/controllers")
    assert "flux install" in block and block.index("flux install") < block.index(
        "kubectl apply -k infra/overlays/dev/controllers"
    )
    outputs: dict[str, Any] = {}
    for line in block:
        done = shell.run(line)
        assert done.returncode == 0, f"{line}: {done.stderr}"
        outputs[line] = done.stdout
    have = stored(shell.api)
    for layer in ("crds", "controllers", "agents", "tasks"):
        missing = built(ROOT / "infra" / "overlays" / "dev" / layer) - have
        assert not missing, f"dev/{layer}: {sorted(missing)[:5]}"
    assert not built(ROOT / "infra" / "monitoring") - have
    assert shell.sent_kustomizations() == []
    listing = outputs["kubectl -n aistack get oagent,tasko"]
    assert "ollamaagent.ai.stack/qna-agent" in listing and "taskorchestration.ai.stack/" in listing
