"""Operator reconcile latency: N TaskOrchestrations, from create to their Workflow in the API server.

The operator runs through kopf's real machinery (KopfRunner) against the API server of
`--kubeconfig` (a real cluster with the aistack and Argo CRDs installed: the numbers then
measure the operator), or, without one, against the test stand-in (kmock), which answers each
request by scanning every stored object: at hundreds of objects its requests, not the operator,
dominate, and the script says so. Baseline in the same run: one bare Workflow create
round-trip through the same client and server. Prints p50/p95 and their ratio to that baseline.

    python benchmarks/operator_reconcile.py [--tasks 200] [--kubeconfig FILE] [--namespace aistack-bench]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import kubernetes
from kopf.testing import KopfRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the kmock harness lives with the tests

from kube import OPERATOR_RESOURCES, ApiServer  # noqa: E402

from aistack.crds.validation import load_file  # noqa: E402
from aistack.operator import kube  # noqa: E402

AI, ARGO = ("ai.stack", "v1alpha1"), ("argoproj.io", "v1alpha1")


@contextlib.contextmanager
def api_server(kubeconfig: str | None) -> Iterator[tuple[str, ApiServer | None]]:
    """The kubeconfig to measure against, and the stand-in when there is no real server."""
    if kubeconfig:
        yield kubeconfig, None
        return
    with tempfile.TemporaryDirectory() as tmp, ApiServer(Path(tmp), OPERATOR_RESOURCES) as api:
        yield str(api.kubeconfig), api


def workflow_watcher(
    co: kubernetes.client.CustomObjectsApi, namespace: str, api: ApiServer | None, seen: dict[str, float]
) -> Callable[[], None]:
    """Records when each Workflow name first appears; returns a stop function."""
    stop = threading.Event()

    def poll_stand_in() -> None:
        assert api is not None
        while not stop.is_set():
            now = time.perf_counter()
            for name in api.names("workflows"):
                seen.setdefault(name, now)
            time.sleep(0.02)

    def watch_server() -> None:  # a real server: one watch stream, no polling
        while not stop.is_set():
            stream = kubernetes.watch.Watch().stream(
                co.list_namespaced_custom_object, *ARGO, namespace, "workflows", timeout_seconds=5
            )
            for event in stream:
                seen.setdefault(event["object"]["metadata"]["name"], time.perf_counter())
                if stop.is_set():
                    break

    thread = threading.Thread(target=poll_stand_in if api is not None else watch_server, daemon=True)
    thread.start()
    return stop.set


def run(args: argparse.Namespace) -> None:
    seed = load_file(ROOT / "crds" / "examples" / "seed.yaml")
    agents = [d for d in seed if d["kind"] == "OllamaAgent"]
    task = next(d for d in seed if d["kind"] == "TaskOrchestration")
    with api_server(args.kubeconfig) as (kubeconfig, api):
        kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = kubeconfig
        kube.api_client.cache_clear()
        api_client = kubernetes.config.new_client_from_config(kubeconfig)
        co, core = kubernetes.client.CustomObjectsApi(api_client), kubernetes.client.CoreV1Api(api_client)
        namespace = args.namespace if api is None else "default"
        if api is None:
            with contextlib.suppress(kubernetes.client.ApiException):  # 409: it exists
                core.create_namespace({"metadata": {"name": namespace}})
        run_id = uuid.uuid4().hex[:6]
        baseline = []
        for i in range(50):
            t = time.perf_counter()
            co.create_namespaced_custom_object(*ARGO, namespace, "workflows",
                                               {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"name": f"base-{run_id}-{i}"}, "spec": {}})  # fmt: skip
            baseline.append(time.perf_counter() - t)
        settings = kopf.OperatorSettings()
        settings.scanning.disabled = True
        settings.watching.server_timeout = 30
        settings.queueing.idle_timeout = settings.queueing.exit_timeout = 0.5
        settings.posting.enabled = False
        created: dict[str, float] = {}
        seen: dict[str, float] = {}
        with KopfRunner(
            ["run", "--standalone", "-n", namespace, "-m", "aistack.operator.main"],
            settings=settings,
            timeout=60,
        ):
            for agent in agents:
                body = {**agent, "metadata": {**agent["metadata"], "namespace": namespace}}
                with contextlib.suppress(kubernetes.client.ApiException):
                    co.create_namespaced_custom_object(*AI, namespace, "ollamaagents", body)

            def ready(name: str) -> bool:
                got = co.get_namespaced_custom_object(*AI, namespace, "ollamaagents", name)
                return (got.get("status") or {}).get("phase") == "Ready"

            while not all(ready(a["metadata"]["name"]) for a in agents):
                time.sleep(0.1)
            stop = workflow_watcher(co, namespace, api, seen)
            started = time.perf_counter()
            for i in range(args.tasks):
                name = f"bench-{run_id}-{i:04d}"
                created[f"{name}-g1"] = time.perf_counter()
                co.create_namespaced_custom_object(
                    *AI,
                    namespace,
                    "taskorchestrations",
                    {**task, "metadata": {"name": name, "namespace": namespace}},
                )
            deadline = time.perf_counter() + 600
            while len(set(created) & set(seen)) < args.tasks and time.perf_counter() < deadline:
                time.sleep(0.1)
            elapsed = time.perf_counter() - started
            stop()
            loaded = []  # the server's own request latency once it holds every object
            for _ in range(20):
                t = time.perf_counter()
                co.get_namespaced_custom_object(*AI, namespace, "ollamaagents", agents[0]["metadata"]["name"])
                loaded.append(time.perf_counter() - t)
            if api is None:  # leave a real cluster as it was, while the operator can release its finalizer
                clean_up(co, namespace, run_id, args.tasks)
    report(
        args.tasks, created, seen, elapsed, baseline, loaded, against=args.kubeconfig or "the kmock stand-in"
    )


def clean_up(co: kubernetes.client.CustomObjectsApi, namespace: str, run_id: str, tasks: int) -> None:
    """Delete what the run created (a task's Workflow goes with it, by ownerReference)."""
    names = [f"bench-{run_id}-{i:04d}" for i in range(tasks)]
    for name in names:
        with contextlib.suppress(kubernetes.client.ApiException):
            co.delete_namespaced_custom_object(*AI, namespace, "taskorchestrations", name)
    for i in range(50):
        with contextlib.suppress(kubernetes.client.ApiException):
            co.delete_namespaced_custom_object(*ARGO, namespace, "workflows", f"base-{run_id}-{i}")
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        left = co.list_namespaced_custom_object(*AI, namespace, "taskorchestrations")["items"]
        if not any(t["metadata"]["name"] in names for t in left):
            return
        time.sleep(0.2)
    print(f"some bench-{run_id}-* tasks were still being deleted after 60 s")


def report(
    tasks: int, created: dict[str, float], seen: dict[str, float], elapsed: float,
    baseline: list[float], loaded: list[float], against: str,
) -> None:  # fmt: skip
    latencies: list[Any] = sorted(seen[n] - created[n] for n in created if n in seen)
    done = len(latencies)
    if not done:
        print(f"no task got its Workflow within 600 s against {against}")
        return
    p50, p95 = statistics.median(latencies), latencies[int(0.95 * (done - 1))]
    base = statistics.median(baseline)
    print(f"API server: {against}")
    print(f"{done}/{tasks} tasks got their Workflow in {elapsed:.1f} s ({done / elapsed:.1f} tasks/s)")
    print(f"create -> Workflow latency: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    print(f"baseline bare Workflow create: p50 {base * 1000:.1f} ms; ratio p50/baseline {p50 / base:.0f}x")
    print(f"GET latency once loaded: {statistics.median(loaded) * 1000:.1f} ms")
    if against == "the kmock stand-in":
        print("(kmock scans every stored object per request: give --kubeconfig to measure the operator)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--kubeconfig", help="measure against this API server (default: the kmock stand-in)")
    parser.add_argument(
        "--namespace", default="aistack-bench", help="with --kubeconfig: where to create the tasks"
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
