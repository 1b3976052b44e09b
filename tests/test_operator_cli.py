"""`aistack operator run` as a user starts it: a process, no flags, against an API server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import free_port
from kube import OPERATOR_RESOURCES, ApiServer
from test_operator import AGENTS, client, create, status_of, wait_for


def test_no_flags_means_cluster_wide_with_a_warning_and_info_logs(tmp_path: Path) -> None:
    with ApiServer(tmp_path, OPERATOR_RESOURCES) as api:
        env = {**os.environ, "KUBECONFIG": str(api.kubeconfig), "AISTACK_WATCH_TIMEOUT": "2"}
        health = f"http://127.0.0.1:{free_port()}/healthz"
        log = (tmp_path / "operator.log").open("w+")
        proc = subprocess.Popen(
            [sys.executable, "-m", "aistack", "operator", "run", "--metrics-port", "0", "--health", health],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
        try:
            created = create(
                api, {**AGENTS[0], "metadata": {"name": "summarizer-agent", "namespace": "default"}}
            )
            wait_for(
                lambda: status_of(api, "ollamaagents", "summarizer-agent").get("phase") == "Ready",
                timeout=30,
                what="the agent Ready",
            )
            assert created["metadata"]["uid"] and client(api)
            time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(20)
        log.seek(0)
        output = log.read()
    assert "watching all namespaces (cluster-wide)" in output and "[WARNING" in output
    assert "give -n" not in output, "no flags is not an error"
    # the reconcile, at INFO, with the object named
    assert "[INFO    ] [default/summarizer-agent] Ready: batch mode" in output, output[-3000:]
    assert "Handler 'reconcile_agent' succeeded." in output


def test_the_reconcile_benchmark_measures_the_api_server_it_is_given(tmp_path: Path) -> None:
    """--kubeconfig: any API server (here a stand-in started apart), its own namespace, cleaned up."""
    from conftest import ROOT

    with ApiServer(tmp_path, OPERATOR_RESOURCES) as api:
        done = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "operator_reconcile.py"), "--tasks", "3",
             "--kubeconfig", str(api.kubeconfig), "--namespace", "bench"],
            capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert (
            f"API server: {api.kubeconfig}" in done.stdout and "3/3 tasks got their Workflow" in done.stdout
        )
        assert "ratio p50/baseline" in done.stdout
        assert "bench" in api.names("namespaces")
        assert not [n for n in api.names("taskorchestrations") if n.startswith("bench-")], "cleaned up"
