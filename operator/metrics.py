"""Prometheus metrics of the operator (served by `aistack operator run --metrics-port`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("aistack_operator_reconciles_total", "Reconciles by kind and result", ["kind", "result"])
RECONCILE_SECONDS = Histogram("aistack_operator_reconcile_seconds", "Reconcile latency", ["kind"])
TASKS = Gauge("aistack_tasks", "TaskOrchestrations by phase", ["namespace", "name", "phase"])
TOKENS = Gauge(
    "aistack_task_tokens", "Tokens used by a task's latest run, by stage agent", ["namespace", "task", "kind"]
)
WORKFLOWS_CREATED = Counter(
    "aistack_operator_workflows_created_total", "Workflows and CronWorkflows created", ["kind"]
)


@contextmanager
def reconcile(kind: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:
        RECONCILES.labels(kind, type(exc).__name__).inc()
        raise
    else:
        RECONCILES.labels(kind, "ok").inc()
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)


def task_phase(namespace: str, name: str, phase: str) -> None:
    for known in ("Pending", "Submitted", "Scheduled", "Running", "Succeeded", "Failed"):
        TASKS.labels(namespace, name, known).set(1 if known == phase else 0)
