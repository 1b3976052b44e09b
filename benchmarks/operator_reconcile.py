"""Operator reconcile latency: N TaskOrchestrations against the API-server stand-in (kmock).

Measures, per task, the time from its create request to the Workflow's appearance in the
API server, with the operator running through kopf's real machinery (KopfRunner). Baseline
in the same process: one bare Workflow create round-trip through the same client and server.
Prints p50/p95 and their ratio to that baseline, and the stand-in's own request latency once it
holds all the objects: kmock 0.8 answers each request by scanning every stored object, so at
hundreds of objects its requests, not the operator, dominate (a real API server indexes them).

    python benchmarks/operator_reconcile.py [--tasks 500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import kopf
import kubernetes
from kopf.testing import KopfRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the kmock harness lives with the tests

from kube import OPERATOR_RESOURCES, ApiServer  # noqa: E402

from aistack.crds.validation import load_file  # noqa: E402
from aistack.operator import kube  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    args = parser.parse_args()
    seed = load_file(ROOT / "crds" / "examples" / "seed.yaml")
    agents = [d for d in seed if d["kind"] == "OllamaAgent"]
    task = next(d for d in seed if d["kind"] == "TaskOrchestration")
    with tempfile.TemporaryDirectory() as tmp, ApiServer(Path(tmp), OPERATOR_RESOURCES) as api:
        kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(api.kubeconfig)
        kube.api_client.cache_clear()
        co = kubernetes.client.CustomObjectsApi(kubernetes.config.new_client_from_config(str(api.kubeconfig)))
        baseline = []
        for i in range(50):
            t = time.perf_counter()
            co.create_namespaced_custom_object("argoproj.io", "v1alpha1", "default", "workflows",
                                               {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"name": f"base-{i}"}, "spec": {}})  # fmt: skip
            baseline.append(time.perf_counter() - t)
        settings = kopf.OperatorSettings()
        settings.scanning.disabled = True
        settings.watching.server_timeout = 30
        settings.queueing.idle_timeout = settings.queueing.exit_timeout = 0.5
        settings.posting.enabled = False
        created: dict[str, float] = {}
        seen: dict[str, float] = {}
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                now = time.perf_counter()
                for name in api.names("workflows"):
                    seen.setdefault(name, now)
                time.sleep(0.02)

        with KopfRunner(
            ["run", "--standalone", "-n", "default", "-m", "aistack.operator.main"],
            settings=settings,
            timeout=60,
        ):
            for agent in agents:
                co.create_namespaced_custom_object("ai.stack", "v1alpha1", "default", "ollamaagents", agent)

            def ready(name: str) -> bool:
                status = (
                    co.get_namespaced_custom_object(
                        "ai.stack", "v1alpha1", "default", "ollamaagents", name
                    ).get("status")
                    or {}
                )
                return status.get("phase") == "Ready"

            while not all(ready(a["metadata"]["name"]) for a in agents):
                time.sleep(0.1)
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            started = time.perf_counter()
            for i in range(args.tasks):
                body = {**task, "metadata": {"name": f"task-{i:04d}"}}
                created[f"task-{i:04d}-g1"] = time.perf_counter()
                co.create_namespaced_custom_object(
                    "ai.stack", "v1alpha1", "default", "taskorchestrations", body
                )
            deadline = time.perf_counter() + 600
            while len(set(created) & set(seen)) < args.tasks and time.perf_counter() < deadline:
                time.sleep(0.1)
            elapsed = time.perf_counter() - started
            stop.set()
            # the stand-in's own request latency once it holds every object (kmock scans them all)
            loaded = []
            for _ in range(20):
                t = time.perf_counter()
                co.get_namespaced_custom_object(
                    "ai.stack", "v1alpha1", "default", "ollamaagents", agents[0]["metadata"]["name"]
                )
                loaded.append(time.perf_counter() - t)
        latencies = sorted(seen[n] - created[n] for n in created if n in seen)
    done = len(latencies)
    p50 = statistics.median(latencies)
    p95 = latencies[int(0.95 * (done - 1))]
    base = statistics.median(baseline)
    print(f"{done}/{args.tasks} tasks got their Workflow in {elapsed:.1f} s ({done / elapsed:.1f} tasks/s)")
    print(f"create -> Workflow latency: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    after = statistics.median(loaded)
    print(
        f"baseline bare Workflow create (empty store): p50 {base * 1000:.1f} ms; ratio p50/baseline {p50 / base:.0f}x"
    )
    stored = 2 * done + len(agents) + 50
    print(
        f"stand-in GET latency with {stored} objects stored: {after * 1000:.1f} ms (kmock scans every object per request)"
    )


if __name__ == "__main__":
    main()
