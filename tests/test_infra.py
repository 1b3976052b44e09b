"""infra/: every kustomization builds with the real kubectl, every built object validates, the
overlays say what the docs promise, and checkov reports zero failed checks (Terraform itself:
test_terraform.py)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT
from infra_tools import INFRA, by_kind, checkov, kustomization_dirs, kustomize
from test_terraform import terraform, unquote

from aistack.crds.validation import validate_object

KUBERNETES_VERSION = "1.33"  # the kubectl we build with, and the EKS version in cluster-iac
OVERLAYS = {name: INFRA / "overlays" / name for name in ("dev", "prod")}
LAYERS = ("crds", "controllers", "agents", "tasks")
# kinds whose schema lives outside Kubernetes: checked structurally below
FLUX_KINDS = {"HelmRelease", "HelmRepository", "GitRepository", "Kustomization"}
PROMETHEUS_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
EXACT_VERSION = re.compile(r"v?\d+\.\d+\.\d+")  # a pinned chart version


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_kustomization_builds_with_kubectl(directory: Path) -> None:
    objects = kustomize(directory)
    assert objects, f"{directory} builds to nothing"
    ids = [
        (o["apiVersion"].split("/")[0], o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
        for o in objects
    ]
    assert len(ids) == len(set(ids)), f"duplicate objects in {directory}"


def _validate(obj: dict[str, Any]) -> list[str]:
    kind, group = obj["kind"], obj["apiVersion"].split("/")[0]
    where = f"{kind}/{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
    if group == "ai.stack":
        return [f"{where}: {e}" for e in validate_object(obj)]
    if kind in FLUX_KINDS or kind in PROMETHEUS_KINDS:
        return [f"{where}: {e}" for e in _structural(obj)]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{where}: {'.'.join(map(str, e.path))}: {e.message}"]
    return []


def _structural(obj: dict[str, Any]) -> list[str]:
    """What a Flux or Prometheus Operator object must have for its controller to accept it."""
    kind, spec, errors = obj["kind"], obj.get("spec") or {}, []
    expected_api = {
        "HelmRelease": "helm.toolkit.fluxcd.io/v2",
        "HelmRepository": "source.toolkit.fluxcd.io/v1",
        "GitRepository": "source.toolkit.fluxcd.io/v1",
        "Kustomization": "kustomize.toolkit.fluxcd.io/v1",
        "ServiceMonitor": "monitoring.coreos.com/v1",
        "PodMonitor": "monitoring.coreos.com/v1",
        "PrometheusRule": "monitoring.coreos.com/v1",
    }[kind]
    if obj["apiVersion"] != expected_api:
        errors.append(f"apiVersion {obj['apiVersion']}, expected {expected_api}")
    if not obj["metadata"].get("namespace"):
        errors.append("metadata.namespace is required")
    if kind == "HelmRelease":
        chart = spec.get("chart", {}).get("spec", {})
        if not EXACT_VERSION.fullmatch(str(chart.get("version", ""))):
            errors.append(f"spec.chart.spec.version {chart.get('version')!r} is not an exact pinned version")
        if chart.get("sourceRef", {}).get("kind") != "HelmRepository" or not chart.get("chart"):
            errors.append("spec.chart.spec needs chart and a HelmRepository sourceRef")
        if not isinstance(spec.get("values", {}), dict):
            errors.append("spec.values must be an object")
    if kind in {"HelmRepository", "GitRepository"} and not str(spec.get("url", "")).startswith("https://"):
        errors.append("spec.url must be https://")
    if kind in {"HelmRelease", "HelmRepository", "GitRepository", "Kustomization"} and not spec.get(
        "interval"
    ):
        errors.append("spec.interval is required")
    if kind == "Kustomization":
        path = ROOT / spec.get("path", "")
        if not (path / "kustomization.yaml").exists():
            errors.append(f"spec.path {spec.get('path')!r} is not a kustomization in this repository")
        if spec.get("sourceRef", {}).get("kind") != "GitRepository":
            errors.append("spec.sourceRef must be a GitRepository")
    if kind in {"ServiceMonitor", "PodMonitor"}:
        endpoints = spec.get("endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints") or []
        if (
            not spec.get("selector", {}).get("matchLabels")
            or not all(e.get("port") for e in endpoints)
            or not endpoints
        ):
            errors.append("needs a selector and named-port endpoints")
    if kind == "PrometheusRule":
        for group in spec.get("groups", []):
            for rule in group["rules"]:
                if ("alert" in rule) == ("record" in rule) or not rule.get("expr"):
                    errors.append(f"rule {rule}: exactly one of alert/record, and an expr")
    return errors


@pytest.mark.parametrize("directory", [INFRA / "base", *OVERLAYS.values(), INFRA / "monitoring",
                                       INFRA / "flux" / "clusters" / "dev", INFRA / "flux" / "clusters" / "prod"],
                         ids=lambda p: str(p.relative_to(ROOT)))  # fmt: skip
def test_every_built_object_validates(directory: Path) -> None:
    errors = [e for obj in kustomize(directory) for e in _validate(obj)]
    assert errors == []


def test_validation_catches_bad_objects() -> None:
    """The validators above are not vacuous: each kind of mistake is reported."""
    deployment = next(o for o in kustomize(INFRA / "base") if o["kind"] == "Deployment")
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 7
    bad["spec"]["replicaz"] = 1
    assert _validate(bad)
    agent = yaml.safe_load(yaml.safe_dump(by_kind(kustomize(INFRA / "base"), "OllamaAgent")["qna-agent"]))
    agent["spec"]["resources"]["gpu"] = -1
    assert any("gpu" in e for e in _validate(agent))
    release = yaml.safe_load(
        yaml.safe_dump(by_kind(kustomize(INFRA / "base"), "HelmRelease")["argo-workflows"])
    )
    release["spec"]["chart"]["spec"]["version"] = ">=2.0.0"
    assert any("pinned" in e for e in _validate(release))


def test_layers_split_the_platform_without_overlap() -> None:
    """The four layers of each overlay together are exactly the overlay; CRDs come first, CRs last."""
    for overlay in OVERLAYS.values():
        whole = {(o["kind"], o["metadata"]["name"]) for o in kustomize(overlay)}
        parts = [{(o["kind"], o["metadata"]["name"]) for o in kustomize(overlay / layer)} for layer in LAYERS]
        assert set().union(*parts) == whole and sum(map(len, parts)) == len(whole)
        assert {k for k, _ in parts[0]} == {"CustomResourceDefinition"}
        assert {k for k, _ in parts[2]} == {"OllamaAgent"} and {k for k, _ in parts[3]} == {
            "TaskOrchestration"
        }


def test_flux_applies_layers_in_order() -> None:
    for env, overlay in OVERLAYS.items():
        objects = kustomize(INFRA / "flux" / "clusters" / env)
        ks = by_kind(objects, "Kustomization")
        assert set(ks) == {
            "aistack-crds",
            "aistack-controllers",
            "aistack-monitoring",
            "aistack-agents",
            "aistack-tasks",
        }
        order = ["aistack-crds", "aistack-controllers", "aistack-agents", "aistack-tasks"]
        for before, after in itertools.pairwise(order):
            assert [d["name"] for d in ks[after]["spec"]["dependsOn"]] == [before]
        assert [d["name"] for d in ks["aistack-monitoring"]["spec"]["dependsOn"]] == ["aistack-controllers"]
        for name, layer in zip(order, LAYERS, strict=True):
            assert ks[name]["spec"]["path"] == f"./{(overlay / layer).relative_to(ROOT)}"
            assert ks[name]["spec"]["wait"] is True
        assert ks["aistack-crds"]["spec"]["prune"] is False  # never delete CRDs (and every CR) by accident
        sources = by_kind(objects, "GitRepository")
        assert all(k["spec"]["sourceRef"]["name"] in sources for k in ks.values())
        # agents and tasks are healthy only when the operator says so
        assert "Ready" in ks["aistack-agents"]["spec"]["healthCheckExprs"][0]["current"]


def test_helm_releases_point_at_declared_repositories() -> None:
    objects = kustomize(INFRA / "base")
    repos = {(r["metadata"]["namespace"], n) for n, r in by_kind(objects, "HelmRepository").items()}
    releases = by_kind(objects, "HelmRelease")
    assert set(releases) == {"argo-workflows", "gpu-operator", "kube-prometheus-stack"}
    for release in releases.values():
        ref = release["spec"]["chart"]["spec"]["sourceRef"]
        assert (ref["namespace"], ref["name"]) in repos
        for dep in release["spec"].get("dependsOn", []):
            assert dep["name"] in releases


def test_compiled_workflows_find_what_they_reference() -> None:
    """What `aistack compile` output names (service account, artifact repository, model cache, the
    storage settings) exists in the namespace the tasks run in, in every overlay."""
    compiled = yaml.safe_load((ROOT / "argo" / "question-answering.yaml").read_text())
    spec = compiled["spec"]
    claim = next(
        v["persistentVolumeClaim"]["claimName"] for t in spec["templates"] for v in t.get("volumes", [])
    )
    for overlay in OVERLAYS.values():
        objects = kustomize(overlay)
        namespace = {o["metadata"]["namespace"] for o in objects if o["kind"] == "TaskOrchestration"}
        assert namespace == {"aistack"}
        in_ns = {
            (o["kind"], o["metadata"]["name"]) for o in objects if o["metadata"].get("namespace") == "aistack"
        }
        assert ("ServiceAccount", spec["serviceAccountName"]) in in_ns
        assert ("PersistentVolumeClaim", claim) in in_ns
        repo = spec["artifactRepositoryRef"]
        repos = by_kind(objects, "ConfigMap")[repo["configMap"]]
        assert yaml.safe_load(repos["data"][repo["key"]])["s3"]["bucket"]
        argo = by_kind(objects, "HelmRelease")["argo-workflows"]["spec"]["values"]
        assert "aistack" in argo["controller"]["workflowNamespaces"]
        env_from = {next(iter(e)): e[next(iter(e))]["name"] for e in argo["mainContainer"]["envFrom"]}
        assert env_from == {"configMapRef": "aistack-storage", "secretRef": "aistack-storage"}
        role = by_kind(objects, "Role")[spec["serviceAccountName"]]
        assert role["rules"] == [
            {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]}
        ]


def test_dev_overlay_runs_without_gpus() -> None:
    objects = kustomize(OVERLAYS["dev"])
    assert "gpu-operator" not in by_kind(objects, "HelmRelease")
    agents = by_kind(objects, "OllamaAgent")
    # CPU agents: each stage pod's sidecar is the embedded model server, standing in for their models
    assert agents and all(a["spec"]["resources"]["gpu"] == 0 for a in agents.values())
    shared = by_kind(objects, "Deployment")["aistack-models"]["spec"]["template"]["spec"]["containers"][0]
    assert {f"--model={a['spec']['model']}" for a in agents.values()} <= set(shared["args"])
    storage = by_kind(objects, "ConfigMap")["aistack-storage"]["data"]
    assert storage["AWS_ENDPOINT_URL_S3"] == "http://minio.aistack.svc:9000"
    assert {"minio", "aistack-operator"} <= set(by_kind(objects, "Deployment"))
    buckets = {
        t["spec"]["outputTarget"].split("/")[2] for t in by_kind(objects, "TaskOrchestration").values()
    }
    job = by_kind(objects, "Job")["minio-buckets"]["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert all(f'"{b}"' in job for b in buckets), "the bucket job creates every bucket the tasks write to"


def test_prod_overlay_matchesterraform() -> None:
    """The prod overlay's cluster settings are Terraform's defaults and naming, and every object that
    needs them agrees: one bucket, one region, the IRSA roles Terraform creates."""
    objects = kustomize(OVERLAYS["prod"])
    settings = by_kind(objects, "ConfigMap")["aistack-cluster"]["data"]
    tf = terraform()
    variables = {unquote(k): v for block in tf["variable"] for k, v in block.items()}
    assert settings["resultsBucket"] == unquote(variables["results_bucket"]["default"])
    assert settings["region"] == unquote(variables["region"]["default"])
    cluster = unquote(variables["cluster_name"]["default"])
    assert settings["workflowRoleArn"].endswith(f":role/{cluster}-workflow")
    assert settings["gatewayRoleArn"].endswith(f":role/{cluster}-gateway")
    repo = yaml.safe_load(by_kind(objects, "ConfigMap")["artifact-repositories"]["data"]["aistack-s3"])["s3"]
    assert (repo["bucket"], repo["region"], repo["useSDKCreds"]) == (
        settings["resultsBucket"],
        settings["region"],
        True,
    )
    for task in by_kind(objects, "TaskOrchestration").values():
        assert task["spec"]["outputTarget"].startswith(f"s3://{settings['resultsBucket']}/")
    assert any(t["spec"].get("schedule") for t in by_kind(objects, "TaskOrchestration").values()), (
        "a CronWorkflow-backed task"
    )
    accounts = by_kind(objects, "ServiceAccount")
    assert (
        accounts["aistack-workflow"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        == settings["workflowRoleArn"]
    )
    assert (
        accounts["aistack-gateway"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        == settings["gatewayRoleArn"]
    )
    assert "annotations" not in accounts["aistack-operator"]["metadata"], "the operator has no AWS identity"
    assert (
        by_kind(objects, "StorageClass")["aistack-models"]["parameters"]["fileSystemId"]
        == settings["modelCacheFileSystemId"]
    )
    cache = by_kind(objects, "PersistentVolumeClaim")["aistack-model-cache"]["spec"]
    assert cache["storageClassName"] == "aistack-models" and cache["accessModes"] == ["ReadWriteMany"]
    agents = by_kind(objects, "OllamaAgent").values()
    assert agents and all(
        a["spec"]["resources"]["gpu"] >= 1 and not a["spec"]["model"].startswith("aistack-") for a in agents
    )


@pytest.mark.parametrize("framework", ["kubernetes", "kustomize", "terraform"])
def test_checkov_reports_zero_failed_checks(framework: str) -> None:
    report = checkov(framework)
    failed = [f"{c['check_id']} {c['resource']} {c.get('file_path')}" for c in report["failed"]]
    assert failed == []
    assert sum(s["passed"] for s in report["summary"]) > 50, "checkov checked something"
    # every skip says why
    unjustified = [
        s["check_id"]
        for s in report["skipped"]
        if len((s.get("check_result") or {}).get("suppress_comment", "")) < 20
    ]
    assert unjustified == []


def _policies_for(
    objects: tuple[dict[str, Any], ...], namespace: str, labels: dict[str, str]
) -> list[dict[str, Any]]:
    def selects(selector: dict[str, Any]) -> bool:
        ok = selector.get("matchLabels", {}).items() <= labels.items()
        for e in selector.get("matchExpressions", []):
            ok &= (
                (e["key"] in labels)
                if e["operator"] == "Exists"
                else (labels.get(e["key"]) in e.get("values", []))
            )
        return ok

    return [
        p
        for p in by_kind(objects, "NetworkPolicy").values()
        if p["metadata"]["namespace"] == namespace and selects(p["spec"]["podSelector"])
    ]


def test_network_policies_fence_ollama_and_the_operator() -> None:
    for overlay in OVERLAYS.values():
        objects = kustomize(overlay)
        ollama = _policies_for(
            objects, "aistack", {"app.kubernetes.io/name": "ollama", "ai.stack/agent": "qna-agent"}
        )
        assert any(
            p["spec"].get("ingress") is None and p["spec"]["policyTypes"] == ["Ingress"] for p in ollama
        ), "default deny"
        peers_on_11434 = [
            peer
            for p in ollama
            for rule in p["spec"].get("ingress", [])
            if any(port["port"] == 11434 for port in rule.get("ports", []))
            for peer in rule["from"]
        ]
        assert peers_on_11434 == [
            {
                "podSelector": {
                    "matchExpressions": [{"key": "workflows.argoproj.io/workflow", "operator": "Exists"}]
                }
            },
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "aistack-system"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "aistack-gateway"}},
            },
        ]
        # other open ports on Ollama pods: only Prometheus' (metrics), from the monitoring namespace
        others = [
            r
            for p in ollama
            for r in p["spec"].get("ingress", [])
            if all(port["port"] != 11434 for port in r["ports"])
        ]
        assert all(
            r["from"]
            == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
            for r in others
        )
        operator = _policies_for(objects, "aistack-system", {"app.kubernetes.io/name": "aistack-operator"})
        assert len(operator) == 1 and operator[0]["spec"]["policyTypes"] == ["Ingress", "Egress"]
        egress_ports = {
            (p["protocol"], p["port"]) for rule in operator[0]["spec"]["egress"] for p in rule["ports"]
        }
        assert egress_ports == {("TCP", 443), ("TCP", 6443), ("UDP", 53), ("TCP", 53)}
