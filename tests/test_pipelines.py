"""Pipelines: compile TaskOrchestrations to schema-valid Argo objects, run examples locally."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from argo_schema import argo_validate
from conftest import ROOT
from typer.testing import CliRunner

from aistack.cli import app
from aistack.crds.validation import load_file, parse
from aistack.etl.parquet_io import read_manifest, read_table
from aistack.etl.storage import open_storage
from aistack.pipelines.compile import GPU_RESOURCE, compile_task
from aistack.pipelines.examples import example_tasks, regenerate_argo
from aistack.pipelines.local import load_task, run_task

QA = ROOT / "examples" / "question-answering" / "task.yaml"


def seed_task_and_agents() -> tuple[Any, dict[str, Any]]:
    docs = [parse(d) for d in load_file(ROOT / "crds" / "examples" / "seed.yaml")]
    task = next(d for d in docs if d.kind == "TaskOrchestration")
    return task, {d.metadata.name: d for d in docs if d.kind == "OllamaAgent"}


def test_compiled_objects_validate_against_argo_schema() -> None:
    task, agents = seed_task_and_agents()
    argo_validate(compile_task(task, agents).to_dict())
    qa_task, qa_agents = load_task(QA)
    argo_validate(compile_task(qa_task, qa_agents).to_dict())
    scheduled = qa_task.model_copy(deep=True)
    scheduled.spec.schedule = scheduled.spec.schedule or type(qa_task.spec).model_fields[
        "schedule"
    ].annotation.__args__[0](cron="0 3 * * *", timezone="Europe/Paris")  # type: ignore[union-attr]
    cron = compile_task(scheduled, qa_agents).to_dict()
    assert (cron["kind"] == "CronWorkflow" and cron["spec"]["schedules"] == ["0 3 * * *"]) or cron[
        "spec"
    ].get("schedule") == "0 3 * * *"
    assert cron["spec"]["timezone"] == "Europe/Paris" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    argo_validate(cron)


def test_gpu_agents_get_an_ollama_sidecar_with_gpu_scheduling() -> None:
    task, agents = seed_task_and_agents()
    wf = compile_task(task, agents).to_dict()
    templates = {t["name"]: t for t in wf["spec"]["templates"]}
    stage = templates["stage-summarizer-agent"]
    (sidecar,) = stage["sidecars"]
    assert sidecar["image"].startswith("ollama/ollama:")
    assert (
        sidecar["resources"]["limits"][GPU_RESOURCE] == "1"
        and sidecar["resources"]["limits"]["memory"] == "8Gi"
    )
    assert sidecar["resources"]["requests"]["cpu"] == "2"
    # TEMPERATURE is a request option (sent with every call), not something Ollama reads from its env
    assert not any(e["name"] == "TEMPERATURE" for e in sidecar["env"])
    assert {"name": "OLLAMA_HOST", "value": "127.0.0.1:11434"} in sidecar["env"]
    assert stage["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert stage["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert stage["volumes"][0]["persistentVolumeClaim"]["claimName"] == "aistack-model-cache"
    assert {"name": "OLLAMA_HOST", "value": "http://127.0.0.1:11434"} in stage["script"]["env"]
    assert stage["metadata"]["labels"]["ai.stack/agent"] == "summarizer-agent"
    assert stage["retryStrategy"]["limit"] == "3" and stage["retryStrategy"]["backoff"]["duration"] == "10s"
    assert stage["script"]["args"][-1] == "aistack.pipelines.runtime:stage"
    # the DAG: plan -> ingest (one pod per input partition) -> etl -> map shards -> ... -> publish
    dag = {t["name"]: t for t in templates["pipeline"]["dag"]["tasks"]}
    assert (
        dag["ingest"]["withParam"] == "{{tasks.plan.outputs.result}}" and dag["ingest"]["depends"] == "plan"
    )
    assert dag["etl"]["depends"] == "ingest"
    assert dag["qna-agent"]["withParam"] == "{{tasks.etl.outputs.result}}"
    assert (
        dag["summarizer-agent"]["depends"] == "qna-agent" and dag["publish"]["depends"] == "summarizer-agent"
    )
    assert (
        wf["spec"]["activeDeadlineSeconds"] == 6 * 3600 and wf["spec"]["podGC"]["strategy"] == "OnPodSuccess"
    )
    assert wf["metadata"]["annotations"]["workflows.argoproj.io/title"] == "aistack: answer-and-summarize"


def _env(template: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in template["script"]["env"]}


def test_a_multi_model_stage_gets_one_ollama_with_every_model() -> None:
    """A chat stage of three agents on three models: one Ollama sidecar holds the GPU and keeps all
    three models loaded (OLLAMA_MAX_LOADED_MODELS), and every agent is pointed at it."""
    task, agents = load_task(ROOT / "examples" / "multi-model-chat" / "task.yaml")
    wf = compile_task(task, agents).to_dict()
    stage = next(t for t in wf["spec"]["templates"] if t["name"] == "stage-debate")
    (sidecar,) = stage["sidecars"]
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    assert sidecar["image"].startswith("ollama/ollama:") and env["OLLAMA_MAX_LOADED_MODELS"] == "3"
    assert sidecar["resources"]["limits"] == {GPU_RESOURCE: "1", "memory": "24Gi"}
    assert json.loads(_env(stage)["AISTACK_AGENT_HOSTS"]) == {
        name: "http://127.0.0.1:11434" for name in ("advocate", "judge", "skeptic")
    }


def test_cpu_agents_get_the_embedded_server_serving_each_of_their_models() -> None:
    """CPU agents (gpu: 0, as the dev overlay sets them) share the aistack image's model server as a
    sidecar, told every model the stage needs; it asks for no GPU and no GPU node."""
    task, agents = load_task(ROOT / "examples" / "multi-model-chat" / "task.yaml")
    for agent in agents.values():
        agent.spec.resources.gpu = 0
    stage = next(
        t for t in compile_task(task, agents).to_dict()["spec"]["templates"] if t["name"] == "stage-debate"
    )
    (sidecar,) = stage["sidecars"]
    assert sidecar["command"][:3] == ["aistack", "models", "serve"]
    models = [sidecar["command"][i + 1] for i, arg in enumerate(sidecar["command"]) if arg == "--model"]
    assert models == ["llama3.1:8b", "mistral:7b", "qwen2.5:7b"]
    assert GPU_RESOURCE not in (sidecar["resources"].get("limits") or {})
    assert "nodeSelector" not in stage and "tolerations" not in stage and "volumes" not in stage


def test_a_stage_mixing_gpu_cpu_and_service_agents_reaches_each_where_it_runs() -> None:
    task, agents = load_task(ROOT / "examples" / "multi-model-chat" / "task.yaml")
    agents["skeptic"].spec.resources.gpu = 0
    agents["judge"].spec.mode = "service"
    task.metadata.namespace = "team-a"
    stage = next(
        t for t in compile_task(task, agents).to_dict()["spec"]["templates"] if t["name"] == "stage-debate"
    )
    assert [c["name"] for c in stage["sidecars"]] == ["ollama", "models"]
    assert "--port" in stage["sidecars"][1]["command"] and "11435" in stage["sidecars"][1]["command"]
    assert json.loads(_env(stage)["AISTACK_AGENT_HOSTS"]) == {
        "advocate": "http://127.0.0.1:11434",
        "skeptic": "http://127.0.0.1:11435",
        "judge": "http://judge.team-a.svc:11434",
    }


def test_every_template_in_argo_requests_gpus_and_serves_all_its_stage_models() -> None:
    for path in (ROOT / "argo").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        spec = doc["spec"].get("workflowSpec", doc["spec"])
        stages = [t for t in spec["templates"] if t["name"].startswith("stage-")]
        assert stages, path
        for stage in stages:
            (sidecar,) = stage["sidecars"]
            assert sidecar["image"].startswith("ollama/ollama:"), (path, stage["name"])
            assert int(sidecar["resources"]["limits"][GPU_RESOURCE]) >= 1
            hosts = json.loads(_env(stage)["AISTACK_AGENT_HOSTS"])
            assert set(hosts.values()) == {"http://127.0.0.1:11434"}, (path, stage["name"])


def test_compiled_size_does_not_depend_on_the_corpus(tmp_path: Path) -> None:
    task, agents = load_task(QA)
    small = task.model_copy(deep=True)
    small.spec.input.dataset, small.spec.input.uri = None, "s3://corpus/ten-chunks/"  # type: ignore[union-attr]
    big = small.model_copy(deep=True)
    big.spec.input.uri = "s3://corpus/ten-million-chunks/"  # type: ignore[union-attr]
    a, b = compile_task(small, agents, name="x").to_yaml(), compile_task(big, agents, name="x").to_yaml()
    spec_a, spec_b = (_spec_parameter(yaml.safe_load(y)) for y in (a, b))
    assert spec_a.to_json().replace("ten-chunks", "ten-million-chunks") == spec_b.to_json()
    assert _without_spec(a) == _without_spec(b), "only the encoded task differs"
    wide = small.model_copy(deep=True)
    wide.spec.max_shards = 1000
    assert abs(len(compile_task(wide, agents, name="x").to_yaml()) - len(a)) <= 8, (
        "1000 shards are one withParam"
    )
    assert len(a.encode()) < 64 * 1024


def _spec_parameter(doc: dict[str, Any]) -> Any:
    from aistack.pipelines.run_spec import RunSpec

    spec = doc["spec"].get("workflowSpec", doc["spec"])
    (value,) = [p["value"] for p in spec["arguments"]["parameters"] if p["name"] == "spec"]
    return RunSpec.decode(value)


def _without_spec(text: str) -> str:
    doc = yaml.safe_load(text)
    for p in doc["spec"]["arguments"]["parameters"]:
        if p["name"] == "spec":
            p["value"] = "..."
    return yaml.safe_dump(doc)


def test_undefined_agents_are_a_clear_error() -> None:
    task, _ = seed_task_and_agents()
    with pytest.raises(ValueError, match="refers to undefined OllamaAgents: qna-agent, summarizer-agent"):
        compile_task(task, {})


def test_argo_directory_is_up_to_date() -> None:
    assert regenerate_argo(check=True) == [], "run `aistack compile --all`"
    for path in (ROOT / "argo").glob("*.yaml"):
        argo_validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("task_file", example_tasks(), ids=lambda p: p.parent.name)
def test_examples_run_locally_end_to_end(
    task_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every example runs with no Ollama at all, and says what served it (here the extractive engine
    stands in, for exact answers; tests/test_llama_engine.py runs the embedded LLM)."""
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # nothing there: the embedded engine is used
    task, agents = load_task(task_file)
    events: list[str] = []
    run = run_task(task, agents, out=tmp_path.as_uri(), on_event=events.append, stand_in_engine="extractive")
    assert run.embedded and events[0].startswith("no Ollama at http://127.0.0.1:9: started")
    models = {agents[n].spec.model for n in task.spec.agent_refs()}
    assert run.models == {
        m: "served by the embedded aistack-extractive engine (not a language model) stand-in" for m in models
    }
    assert all(f"  {m} -> {run.models[m]}" in events for m in models)
    summary = json.loads(open_storage(run.outputs).read_bytes("summary.json"))
    assert summary["models"] == {
        m: {
            "served_by": "aistack-extractive:latest",
            "engine": summary["models"][m]["engine"],
            "stand_in": True,
        }
        for m in models
    }
    results = read_table(run.outputs, "results").to_pylist()
    assert {(r["model"], r["served_model"]) for r in results} == {
        (m, "aistack-extractive:latest") for m in models
    }
    assert summary["errors"] == 0 and summary["outputs"], summary
    assert all(st["rows"] > 0 for st in summary["stages"].values())
    if task_file == QA:
        assert "brackets containing an expression" in summary["outputs"][0]
    # a second run over unchanged data makes no model calls
    again = run_task(task, agents, out=tmp_path.as_uri(), stand_in_engine="extractive")
    summary2 = json.loads(open_storage(again.outputs).read_bytes("summary.json"))
    assert summary2["calls_cached"] == sum(st["rows"] for st in summary2["stages"].values())
    assert summary2["outputs"] == summary["outputs"]


def test_cli_compile_and_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "wf.yaml"
    result = CliRunner().invoke(app, ["compile", str(QA), "-o", str(target)])
    assert result.exit_code == 0, result.output
    argo_validate(yaml.safe_load(target.read_text()))
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")
    ran = CliRunner().invoke(app, ["run", str(QA), "--out", tmp_path.as_uri(), "--stand-in", "extractive"])
    assert ran.exit_code == 0, ran.output
    assert "llama3.1:8b -> served by the embedded aistack-extractive engine" in ran.output
    assert "A:" in ran.output


def test_hera_authored_pipeline_builds_a_valid_workflow() -> None:
    from aistack.pipelines import hera_example

    wf = hera_example.build().to_dict()
    argo_validate(wf)
    main = next(t for t in wf["spec"]["templates"] if t["name"] == "main")
    tasks = {t["name"]: t for t in main["dag"]["tasks"]}
    assert tasks["ingest"]["withParam"] == "{{tasks.plan.outputs.result}}"
    assert tasks["answer"]["withParam"] == "{{tasks.etl.outputs.result}}"


def test_single_file_input_and_empty_input_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No usable input is a failure no retry can fix: the step exits PERMANENT_EXIT, which the
    compiled retryStrategy's expression does not retry, and says why on stderr."""
    from aistack.pipelines.run_spec import RunSpec, encode_text
    from aistack.pipelines.runtime import PERMANENT_EXIT, PermanentStepError, etl, ingest, plan

    def run_steps(spec: Any, workflow: str) -> str:
        target = encode_text(tmp_path.as_uri())
        for partition in json.loads(
            plan(RunSpec(spec, {n: a.spec for n, a in agents.items()}).encode(), target, workflow)
        ):
            ingest(target, workflow, partition)
        return etl(target, workflow)

    task, agents = load_task(QA)
    spec = task.spec.model_copy(deep=True)
    spec.input.include = "faq/design.html"  # type: ignore[union-attr]
    assert json.loads(run_steps(spec, "wf-1")) == [{"shard": 0, "count": 1}]
    assert read_manifest(f"{tmp_path.as_uri()}/runs/wf-1/etl")["summary"]["documents"] == 1
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.bin.txt").write_bytes(b"\x00\x01")
    spec.input.dataset, spec.input.include, spec.input.uri = None, None, (tmp_path / "bad").as_uri()  # type: ignore[union-attr]
    with pytest.raises(PermanentStepError) as stopped:
        run_steps(spec, "wf-2")
    assert stopped.value.code == PERMANENT_EXIT
    assert isinstance(stopped.value.__cause__, ValueError)
    assert (
        "no usable documents" in stopped.value.message and "all rejected (binary=1)" in stopped.value.message
    )
    assert "etl failed, not retried: ValueError: no usable documents" in capsys.readouterr().err


def test_submit_creates_the_workflow_through_the_kubernetes_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kube import ApiServer

    monkeypatch.delenv("ARGO_SERVER", raising=False)
    with ApiServer(tmp_path, ["argoproj.io/v1alpha1/workflows", "argoproj.io/v1alpha1/cronworkflows"]) as api:
        args = ["submit", str(QA), "--kubeconfig", str(api.kubeconfig), "--name", "qa-run-1"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "Workflow default/qa-run-1 created" in result.output
        (stored,) = api.objects("workflows")
        assert stored["metadata"]["name"] == "qa-run-1" and stored["spec"]["entrypoint"] == "pipeline"
        argo_validate({k: v for k, v in stored.items() if k != "status"})
        again = CliRunner().invoke(app, args)  # the same name twice: a clear conflict error
        assert again.exit_code == 1 and "HTTP 409" in again.output
        assert len(api.objects("workflows")) == 1
        # a scheduled task: one CronWorkflow named after it; submitting again updates it
        digest = ROOT / "examples" / "summarization-pipeline" / "task.yaml"
        cron = ["submit", str(digest), "--kubeconfig", str(api.kubeconfig)]
        first, second = CliRunner().invoke(app, cron), CliRunner().invoke(app, cron)
        assert "CronWorkflow default/howto-digest created" in first.output, first.output
        assert "CronWorkflow default/howto-digest configured" in second.output, second.output
        assert api.names("cronworkflows") == ["howto-digest"]


def test_orchestration_diagram_source_is_up_to_date() -> None:
    from aistack.pipelines.diagram import to_dot

    task, agents = load_task(ROOT / "crds" / "examples" / "seed.yaml")
    dot = to_dot(compile_task(task, agents, name=task.metadata.name))
    assert (ROOT / "docs" / "orchestration-diagram.dot").read_text() == dot, (
        "regenerate: see docs/architecture.md"
    )
    assert "GPU x1" in dot and '"qna-agent" -> "summarizer-agent"' in dot


def test_a_map_after_a_reduce_runs_one_pod_and_shards_are_never_empty() -> None:
    """Only the chunks (and a map's shards) fan out: after a reduce or a chat there is one record set,
    so a map there is one pod, not maxShards pods holding GPUs with nothing to read."""
    from hypothesis import given
    from hypothesis import strategies as st

    from aistack.pipelines.runtime import assign_shards

    task, agents = load_task(QA)
    task.spec.pipeline.append(
        type(task.spec.pipeline[0])(agentRef="summarizer-agent", name="polish", mode="map")
    )
    dag = {t["name"]: t for t in next(t for t in compile_task(task, agents).to_dict()["spec"]["templates"]
                                       if t["name"] == "pipeline")["dag"]["tasks"]}  # fmt: skip
    assert "withParam" in dag["answer"] and "withParam" not in dag["polish"]

    @given(st.lists(st.integers(1, 5000), min_size=1, max_size=40), st.data())
    def contiguous_and_full(rows: list[int], data: st.DataObject) -> None:
        groups = [("part.parquet", i, n) for i, n in enumerate(rows)]
        count = data.draw(st.integers(1, len(groups)))
        shards = assign_shards(groups, count)
        assert len(shards) == count and all(shards), "every shard has a row group"
        assert [g for s in shards for g in s] == [(k, i) for k, i, _ in groups], "in order, each once"

    contiguous_and_full()
