"""The operator's manifests: RBAC covers every API call the code makes, and nothing else."""

from __future__ import annotations

import ast
import re

import yaml
from conftest import ROOT

from aistack.crds.validation import load_file, parse
from aistack.operator import kube, workloads

OPERATOR_DIR = ROOT / "infra" / "base" / "operator"
VERBS = {
    "create": "create",
    "get": "get",
    "read": "get",
    "list": "list",
    "patch": "patch",
    "delete": "delete",
    "replace": "update",
}
CORE = {
    "persistent_volume_claim": ("", "persistentvolumeclaims"),
    "service": ("", "services"),
    "deployment": ("apps", "deployments"),
}


def calls_in_code() -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every kubernetes client call in operator/kube.py, from its AST."""
    tree = ast.parse((ROOT / "operator" / "kube.py").read_text())
    found: set[tuple[str, str, str]] = set()
    for func in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
        strings = {
            n.value for n in ast.walk(func) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
        groups = {"ARGO": "argoproj.io", "AISTACK": "ai.stack"}
        used_groups = {groups[n.id] for n in ast.walk(func) if isinstance(n, ast.Name) and n.id in groups}
        for node in ast.walk(func):
            name = node.attr if isinstance(node, ast.Attribute) else None
            m = re.fullmatch(r"(create|get|read|list|patch|delete|replace)_namespaced_(\w+)", name or "")
            if not m:
                continue
            verb, what = VERBS[m.group(1)], m.group(2)
            if what == "custom_object":
                plurals = {
                    s
                    for s in strings
                    if s in {"workflows", "cronworkflows", "ollamaagents", "taskorchestrations"}
                }
                found |= {
                    (g, p, verb)
                    for g in used_groups
                    for p in plurals
                    if (g == "ai.stack") == (p in {"ollamaagents", "taskorchestrations"})
                }
            elif what in CORE:
                found.add((*CORE[what], verb))
    # a table of creators (dict of bound methods) is also a call site
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and (m := re.fullmatch(r"create_namespaced_(\w+)", node.attr))
            and m.group(1) in CORE
        ):
            found.add((*CORE[m.group(1)], "create"))
    return found


def granted() -> set[tuple[str, str, str]]:
    role = next(
        d for d in yaml.safe_load_all((OPERATOR_DIR / "rbac.yaml").read_text()) if d["kind"] == "ClusterRole"
    )
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def test_code_calls_are_declared_and_granted() -> None:
    derived = calls_in_code()
    assert derived, "the scan found the calls"
    assert derived == kube.CALLS, "operator/kube.py CALLS must list exactly what the code calls"
    assert derived <= granted(), f"RBAC misses {sorted(derived - granted())}"


def owners_in_code() -> set[str]:
    """Plurals of the resources whose handlers call kopf.adopt (their children get ownerReferences
    with blockOwnerDeletion), from operator/handlers.py's AST."""
    tree = ast.parse((ROOT / "operator" / "handlers.py").read_text())
    owners: set[str] = set()
    for func in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
        adopts = any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "adopt"
            for n in ast.walk(func)
        )
        if adopts:
            for deco in func.decorator_list:
                if isinstance(deco, ast.Call):
                    owners |= {
                        a.value for a in deco.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                    }
    return owners


def test_owners_finalizers_are_granted_for_block_owner_deletion() -> None:
    """OwnerReferencesPermissionEnforcement: blockOwnerDeletion needs update on <owner>/finalizers."""
    owners = owners_in_code()
    assert owners == {"taskorchestrations", "ollamaagents"}
    needed = {("ai.stack", f"{plural}/finalizers", "update") for plural in owners}
    assert needed == kube.OWNER_FINALIZERS
    assert needed <= granted(), f"RBAC misses {sorted(needed - granted())}"


def test_rbac_grants_nothing_beyond_the_code_and_kopf() -> None:
    kopf_needs = {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"), ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"), ("", "namespaces", "watch"), ("", "events", "create"), ("events.k8s.io", "events", "create"),
    } | {("ai.stack", r, v) for r in ("taskorchestrations", "ollamaagents") for v in ("get", "list", "watch", "patch")} \
      | {("ai.stack", f"{r}/status", v) for r in ("taskorchestrations", "ollamaagents") for v in ("get", "patch")}  # fmt: skip
    extra = granted() - kube.CALLS - kube.OWNER_FINALIZERS - kopf_needs
    assert not extra, f"RBAC grants more than the code needs: {sorted(extra)}"
    # delete: only the CronWorkflow a task's new generation replaces (it owns it)
    assert not any(
        v in {"*", "deletecollection", "escalate", "bind"}
        or (v == "delete" and (g, r) != ("argoproj.io", "cronworkflows"))
        or (v == "update" and not r.endswith("/finalizers"))
        for g, r, v in granted()
    )


def test_operator_deployment_is_hardened() -> None:
    docs = list(yaml.safe_load_all((OPERATOR_DIR / "deployment.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"] and container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["serviceAccountName"] == "aistack-operator"


def test_service_workloads_for_an_agent() -> None:
    agent = parse(load_file(ROOT / "crds" / "examples" / "seed.yaml")[0])
    spec = agent.spec.model_copy(update={"mode": "service"})  # type: ignore[union-attr]
    pvc = workloads.model_cache_pvc("summarizer-agent", spec)
    assert pvc and pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    dep = workloads.deployment("summarizer-agent", spec)
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (
        env["OLLAMA_KEEP_ALIVE"] == "5m" and env["OLLAMA_NUM_PARALLEL"] == "1" and env["TEMPERATURE"] == "0.7"
    )
    assert (
        dep["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        == "summarizer-agent-models"
    )


def test_derived_workflow_names_fit_argo_and_stay_unique() -> None:
    from aistack.crds.models import DNS1123_LABEL
    from aistack.operator.handlers import workflow_name

    assert workflow_name("qna", 3) == "qna-g3"
    longest = "t" * 63  # the longest name the CRD admits
    for kind, limit in (("Workflow", 63), ("CronWorkflow", 52)):
        a, b = workflow_name(longest, 12, kind), workflow_name("t" * 62 + "u", 12, kind)
        assert len(a) <= limit and len(b) <= limit and a != b, (a, b)
        assert a == workflow_name(longest, 12, kind), (
            "deterministic: a restarted operator adopts, never duplicates"
        )
        assert a.endswith("-g12") and re.fullmatch(DNS1123_LABEL, a)
