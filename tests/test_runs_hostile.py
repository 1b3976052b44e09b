"""Runs and their inputs: unique run ids for concurrent runs, and a dataset's `include` that cannot
leave it, even through a symlink planted inside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from aistack.crds.models import TaskOrchestration
from aistack.etl.parquet_io import read_table
from aistack.gateway.server import load_agents
from aistack.pipelines import runtime
from aistack.pipelines.local import run_name, run_task

AGENTS = load_agents((ROOT / "tests" / "data" / "extractive-agents.yaml",))


def task(name: str, spec_input: dict[str, object]) -> TaskOrchestration:
    return TaskOrchestration.model_validate(
        {"metadata": {"name": name},
         "spec": {"input": spec_input, "question": "What are tuples?",
                  "pipeline": [{"agentRef": "qna-agent", "mode": "map"}], "outputTarget": "s3://unused/x/"}}
    )  # fmt: skip


def test_concurrent_runs_of_one_task_get_their_own_run(tmp_path: Path) -> None:
    """Two `aistack run`s of one task started together: two run ids, two run directories."""
    assert len({run_name("t") for _ in range(50)}) == 50, "unique within one second"
    task_file = tmp_path / "task.yaml"
    task_file.write_text(
        "apiVersion: ai.stack/v1alpha1\nkind: TaskOrchestration\nmetadata: {name: twice}\n"
        "spec:\n  inputText: Tuples are immutable sequences.\n  question: What are tuples?\n"
        "  pipeline: [{agentRef: qna-agent, mode: map}]\n  outputTarget: s3://unused/x/\n"
    )
    command = [sys.executable, "-m", "aistack", "run", str(task_file), "--agents",
               str(ROOT / "tests" / "data" / "extractive-agents.yaml"), "--out", str(tmp_path / "out"),
               "--stand-in", "extractive"]  # fmt: skip
    env = {**os.environ, "OLLAMA_HOST": "http://127.0.0.1:9"}
    both = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    runs = sorted(p.name for p in (tmp_path / "out" / "runs").iterdir())
    assert len(runs) == 2 and all((tmp_path / "out" / r / "summary.json").is_file() for r in runs)


def test_an_include_cannot_leave_its_dataset_through_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("The launch code is 0000. " * 20)
    dataset = tmp_path / "datasets" / "docs"
    dataset.mkdir(parents=True)
    (dataset / "tuples.txt").write_text("Tuples are immutable sequences. " * 20)
    (dataset / "leak.txt").symlink_to(secret)
    monkeypatch.setattr(runtime, "DATASETS_DIR", tmp_path / "datasets")
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")
    run = run_task(task("confined", {"dataset": "docs", "include": "*.txt"}), AGENTS, out=tmp_path.joinpath("out").as_uri(),
                   stand_in_engine="extractive")  # fmt: skip
    etl = f"{tmp_path.joinpath('out').as_uri()}/runs/{run.name}/etl"
    rejected = read_table(etl, "rejected").to_pylist()
    assert [(Path(r["source"]).name, r["reason"]) for r in rejected] == [("leak.txt", "outside_input_root")]
    chunks = " ".join(read_table(etl, "chunks").column("text").to_pylist())
    assert "launch code" not in chunks and "Tuples are immutable" in chunks
    summary = json.loads((tmp_path / "out" / run.name / "summary.json").read_text())
    assert summary["etl"]["rejected"] == {"outside_input_root": 1}


def test_an_input_uri_does_not_follow_a_symlink_out_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway allows input roots; a link inside a root must not lead its ETL elsewhere."""
    secret = tmp_path / "secret.txt"
    secret.write_text("The launch code is 0000. " * 20)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "tuples.txt").write_text("Tuples are immutable sequences. " * 20)
    (corpus / "leak.txt").symlink_to(secret)
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")
    out = tmp_path.joinpath("out").as_uri()
    run = run_task(task("linked", {"uri": corpus.as_uri()}), AGENTS, out=out, stand_in_engine="extractive")
    rejected = read_table(f"{out}/runs/{run.name}/etl", "rejected").to_pylist()
    assert [(Path(r["source"]).name, r["reason"]) for r in rejected] == [("leak.txt", "outside_input_root")]
