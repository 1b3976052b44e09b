"""infra/monitoring: every PromQL expression parses, and every metric it reads is one that aistack,
Argo (for aistack's compiled workflows), the GPU Operator or Prometheus itself produces."""

from __future__ import annotations

import json
import re
from typing import Any

import promql_parser
import yaml
from conftest import ROOT
from infra_tools import INFRA, by_kind, kustomize

from aistack.pipelines.runtime import STEP_METRICS, write_step_metrics

OPERATOR_METRICS = set(re.findall(r'"(aistack_[a-z_]+)"', (ROOT / "operator" / "metrics.py").read_text()))
# produced by others: Prometheus (up), the GPU Operator's DCGM exporter, Argo's controller
EXTERNAL = {"up", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}


def compiled_workflow_metrics() -> set[str]:
    names = set()
    for path in (ROOT / "argo").glob("*.yaml"):
        text = path.read_text()
        names |= set(re.findall(r"name: (aistack_[a-z_]+)", text))
    return names


def selectors(expr: str) -> list[tuple[str | None, dict[str, str]]]:
    """(metric name or None, {label: value}) of every vector selector in a PromQL expression."""
    found: list[tuple[str | None, dict[str, str]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name: m.value for m in node.matchers.matchers}))
        elif isinstance(node, promql_parser.MatrixSelector):
            visit(node.vector_selector)
        for attr in ("expr", "lhs", "rhs", "param"):
            child = getattr(node, attr, None)
            if isinstance(child, promql_parser.Expr):
                visit(child)
        for arg in getattr(node, "args", None) or []:
            visit(arg)

    visit(promql_parser.parse(expr))
    return found


def monitoring() -> tuple[list[dict[str, Any]], list[str]]:
    objects = kustomize(INFRA / "monitoring")
    rules = [
        r
        for o in by_kind(objects, "PrometheusRule").values()
        for g in o["spec"]["groups"]
        for r in g["rules"]
    ]
    dashboard = json.loads(by_kind(objects, "ConfigMap")["aistack-dashboard"]["data"]["aistack.json"])
    return rules, [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_every_expression_reads_metrics_that_exist() -> None:
    rules, panels = monitoring()
    recorded = {r["record"] for r in rules if "record" in r}
    argo = compiled_workflow_metrics()
    known = OPERATOR_METRICS | recorded | EXTERNAL | {f"{m}_bucket" for m in OPERATOR_METRICS}
    assert {
        "aistack_stage_tokens_total",
        "aistack_stage_cached_rows_total",
        "aistack_task_last_success_timestamp_seconds",
    } <= argo
    unknown = []
    for expr in [r["expr"] for r in rules] + panels:
        for name, labels in selectors(expr):
            if name is None:  # a regex on __name__: Argo's custom metrics, with or without its prefix
                pattern = labels["__name__"]
                metric = pattern.removeprefix("(argo_workflows_)?")
                if metric not in argo or not re.fullmatch(pattern, f"argo_workflows_{metric}"):
                    unknown.append(f"{expr}: {pattern}")
            elif name not in known:
                unknown.append(f"{expr}: {name}")
    assert unknown == []


def test_alerts_cover_what_the_issue_asks() -> None:
    rules, _ = monitoring()
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert {
        "AistackTaskFailed",
        "AistackErrorBudgetExceeded",
        "AistackScheduledRunMissing",
        "AistackGpuIdleWhileTasksQueue",
    } <= set(alerts)
    for alert in alerts.values():
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_dashboard_panels() -> None:
    dashboard = json.loads(
        by_kind(kustomize(INFRA / "monitoring"), "ConfigMap")["aistack-dashboard"]["data"]["aistack.json"]
    )
    titles = {p["title"] for p in dashboard["panels"]}
    assert {
        "Tasks by phase",
        "Tokens/s by agent",
        "Mean model call latency by agent",
        "Result cache hit ratio by agent",
        "GPU utilisation (DCGM)",
    } <= titles
    labels = by_kind(kustomize(INFRA / "monitoring"), "ConfigMap")["aistack-dashboard"]["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1"


def test_bad_promql_is_caught() -> None:
    try:
        selectors("sum by (agent (rate(x[5m]))")
    except ValueError as e:
        assert "parenthesis" in str(e)
    else:
        raise AssertionError("unbalanced PromQL parsed")


def test_monitors_select_what_exists() -> None:
    base = kustomize(INFRA / "base")
    monitors = kustomize(INFRA / "monitoring")
    service = by_kind(base, "Service")["aistack-operator-metrics"]
    monitor = by_kind(monitors, "ServiceMonitor")["aistack-operator"]
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    argo = by_kind(base, "HelmRelease")["argo-workflows"]["spec"]["values"]["controller"]["metricsConfig"]
    assert argo == {"enabled": True, "secure": False}  # the PodMonitor scrapes plain HTTP


def test_stage_steps_leave_their_totals_for_argo(tmp_path: Any, monkeypatch: Any) -> None:
    """runtime.write_step_metrics writes what the compiled stage templates read as output
    parameters and emit as custom metrics."""
    monkeypatch.setenv("AISTACK_METRICS_DIR", str(tmp_path))
    write_step_metrics(
        {
            "rows": 10,
            "errors": 1,
            "cached": 4,
            "prompt_tokens": 900,
            "eval_tokens": 120,
            "call_ns": 2_500_000_000,
        }
    )
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "rows": "10", "errors": "1", "cached": "4", "prompt_tokens": "900", "eval_tokens": "120", "call_seconds": "2.5",
    }  # fmt: skip
    compiled = yaml.safe_load((ROOT / "argo" / "question-answering.yaml").read_text())
    stage = next(t for t in compiled["spec"]["templates"] if t["name"] == "stage-answer")
    outputs = {p["name"]: p["valueFrom"] for p in stage["outputs"]["parameters"]}
    env = {e["name"]: e["value"] for e in stage["script"]["env"]}
    assert {v["path"] for v in outputs.values()} == {
        f"{env['AISTACK_METRICS_DIR']}/{k}" for k in STEP_METRICS
    }
    assert all(v["default"] == "0" for v in outputs.values())  # a failed step still reports
    used = {m["counter"]["value"] for m in stage["metrics"]["prometheus"] if "counter" in m}
    assert {f"{{{{outputs.parameters.{name}}}}}" for name in outputs} <= used
