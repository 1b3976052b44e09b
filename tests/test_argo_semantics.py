"""What compiled fields mean on Argo (v4.1: workflow/controller/operator.go, dag.go, and Argo's field
docs in its JSON schema), read from the compiled objects, not from aistack's local runner. docs/argo-mapping.md has the table these tests hold the compiler to."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT
from infra_tools import tool

from aistack.crds.models import TaskOrchestration
from aistack.pipelines.compile import compile_task
from aistack.pipelines.examples import compiled_examples
from aistack.pipelines.local import _resolve, load_task, run_task
from aistack.pipelines.run_spec import RunSpec, decode_text
from aistack.pipelines.runtime import PERMANENT_EXIT
from aistack.steps.model_server import EmbeddedModelServer

QA = ROOT / "examples" / "question-answering" / "task.yaml"
DIGEST = ROOT / "examples" / "summarization-pipeline" / "task.yaml"
TAG = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def compiled(task_file: Path = QA, **changes: Any) -> dict[str, Any]:
    task, agents = load_task(task_file)
    spec = task.spec.model_dump(by_alias=True, exclude_none=True) | changes
    task = TaskOrchestration.model_validate(
        {"metadata": task.metadata.model_dump(exclude_none=True), "spec": spec}
    )
    return compile_task(task, agents).to_dict()


def workflow_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"].get("workflowSpec", doc["spec"])


def steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in workflow_spec(doc)["templates"] if "script" in t]


def test_a_maximum_backoff_is_argos_cap_not_its_total_window() -> None:
    """Argo: `backoff.maxDuration` is the total retry window, counted from the first attempt's
    start, and becomes the retried pods' deadline; `backoff.cap` limits one delay. The task's
    `retries.backoff.maxDuration` (default 5m) is a maximum backoff, so it is compiled to `cap`, and
    Argo's maxDuration is set only from the task's own `retries.window`. Every step is retried."""
    for template in steps(compiled()):
        backoff = template["retryStrategy"]["backoff"]
        assert backoff == {"duration": "10s", "factor": "2", "cap": "5m"}, template["name"]
    windowed = compiled(retries={"limit": 2, "backoff": {"maxDuration": "1m"}, "window": "2h"})
    for template in steps(windowed):
        assert template["retryStrategy"]["limit"] == "2"
        assert template["retryStrategy"]["backoff"]["cap"] == "1m"
        assert template["retryStrategy"]["backoff"]["maxDuration"] == "2h"


def test_a_failure_no_retry_can_fix_is_not_retried() -> None:
    """Argo: with retryPolicy Always every failed or errored attempt is retried unless the
    strategy's `expression` is false; `lastRetry.exitCode` is the last attempt's exit code as a
    string. Steps exit PERMANENT_EXIT for an invalid task, no usable input or a model the server
    cannot provide, and the expression stops exactly those."""
    names = set()
    for template in steps(compiled()):
        strategy = template["retryStrategy"]
        assert strategy["retryPolicy"] == "Always"
        assert strategy["expression"] == f'lastRetry.exitCode != "{PERMANENT_EXIT}"'
        names.add(template["name"])
    assert {"plan", "ingest", "etl", "publish", "stage-answer", "stage-combine"} <= names


def test_suspend_pauses_the_schedule_not_every_run() -> None:
    """Argo: a CronWorkflow's `spec.suspend` stops its schedule; `spec.workflowSpec.suspend` makes
    every run start paused (and with concurrencyPolicy Forbid, the first paused run blocks the next)."""
    doc = compiled(DIGEST, schedule={"cron": "0 3 * * *", "suspend": True})
    assert doc["kind"] == "CronWorkflow" and doc["spec"]["suspend"] is True
    assert "suspend" not in doc["spec"]["workflowSpec"]
    running = compiled(DIGEST)
    assert "suspend" not in running["spec"] and "suspend" not in running["spec"]["workflowSpec"]


def test_a_timeout_is_the_runs_deadline_in_whole_seconds() -> None:
    """Argo: `activeDeadlineSeconds` (an integer) ends the run after that long; 0 would end it at once."""
    assert workflow_spec(compiled(timeout="1h30m"))["activeDeadlineSeconds"] == 5400
    assert workflow_spec(compiled(timeout="500ms"))["activeDeadlineSeconds"] == 1


def test_scheduled_and_template_objects_have_stable_names() -> None:
    """`kubectl apply` (and Flux) need `metadata.name`: a CronWorkflow and a WorkflowTemplate are named
    after the task; runs keep `generateName` (Argo makes each unique)."""
    first, second = compiled(DIGEST), compiled(DIGEST)
    assert first["metadata"]["name"] == second["metadata"]["name"] == "howto-digest"
    assert "generateName" not in first["metadata"]
    run = compiled()
    assert "name" not in run["metadata"] and run["metadata"]["generateName"] == "python-docs-qna-"
    templates = {p.name: yaml.safe_load(t) for p, t in compiled_examples().items()}
    assert templates["question-answering.yaml"]["metadata"]["name"] == "python-docs-qna"
    long = "a" * 63
    task, agents = load_task(DIGEST)
    task.metadata.name = long
    name = compile_task(task, agents).to_dict()["metadata"]["name"]
    assert len(name) <= 52 and name == compile_task(task, agents).to_dict()["metadata"]["name"]


def test_kubectl_apply_twice_names_one_cronworkflow(tmp_path: Path) -> None:
    from kube import ApiServer

    task, agents = load_task(DIGEST)
    path = tmp_path / "cron.yaml"
    path.write_text(compile_task(task, agents).to_yaml())
    kubectl = str(tool("kubectl"))
    with ApiServer(tmp_path, ["argoproj.io/v1alpha1/cronworkflows"]) as api:
        # HOME too: kubectl keeps its discovery cache under $HOME/.kube, never in the checkout
        env = {"KUBECONFIG": str(api.kubeconfig), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        dry = [subprocess.run([kubectl, "apply", "--dry-run=client", "-o", "name", "-n", "default", "-f", str(path)],
                              env=env, capture_output=True, text=True, check=False) for _ in range(2)]  # fmt: skip
        assert [d.stdout.strip() for d in dry] == ["cronworkflow.argoproj.io/howto-digest"] * 2, dry[0].stderr
        for _ in range(2):
            done = subprocess.run([kubectl, "apply", "-n", "default", "-f", str(path)], env=env,
                                  capture_output=True, text=True, check=False)  # fmt: skip
            assert done.returncode == 0, done.stderr
        assert api.names("cronworkflows") == ["howto-digest"]


def _scope_problems(doc: dict[str, Any]) -> list[str]:
    """Every `{{...}}` the compiler emitted, checked against the scope Argo gives it there."""
    spec = workflow_spec(doc)
    declared = {p["name"] for p in spec["arguments"]["parameters"]}
    problems: list[str] = []

    def check(value: Any, allowed: set[str], where: str) -> None:
        for text in [value] if isinstance(value, str) else []:
            for tag in TAG.findall(text):
                if tag not in allowed:
                    problems.append(f"{where}: {{{{{tag}}}}}")
        if isinstance(value, dict):
            for k, v in value.items():
                check(v, allowed, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                check(v, allowed, f"{where}[{i}]")

    globals_ = {f"workflow.parameters.{p}" for p in declared} | {"workflow.name"}
    check(
        spec.get("metrics"),
        {"workflow.duration", "workflow.status", "workflow.creationTimestamp.s"},
        "metrics",
    )
    check(spec["arguments"], set(), "arguments")  # the task itself: no tag at all
    for template in spec["templates"]:
        name = template["name"]
        if "dag" in template:
            tasks = {t["name"]: t for t in template["dag"]["tasks"]}
            for task in tasks.values():
                deps = set(re.findall(r"[a-z0-9-]+", task.get("depends", "")))
                # a task may read the results of the tasks it depends on, directly or not
                closure, todo = set(), list(deps)
                while todo:
                    d = todo.pop()
                    if d not in closure:
                        closure.add(d)
                        todo += re.findall(r"[a-z0-9-]+", tasks[d].get("depends", ""))
                results = {f"tasks.{d}.outputs.result" for d in closure}
                items = {"item.shard", "item.count", "item"} if "withParam" in task else set()
                check(task.get("arguments"), globals_ | results | items, f"{name}.{task['name']}")
                check(task.get("withParam"), results, f"{name}.{task['name']}.withParam")
        else:
            outputs = {
                f"outputs.parameters.{p['name']}" for p in template.get("outputs", {}).get("parameters", [])
            }
            check(template.get("metrics"), {"duration", "status"} | outputs, f"{name}.metrics")
            check(template["script"].get("source"), {"inputs.parameters"}, f"{name}.source")  # Hera's runner
            rest = {k: v for k, v in template.items() if k not in ("metrics", "script")}
            rest["script"] = {k: v for k, v in template["script"].items() if k != "source"}
            check(rest, set(), name)
    return problems


HOSTILE = (
    "What does {{ x }} do, and {{workflow.name}}, and {{=1+1}}? \"quotes\" 'too'\nnew line\t tab, "
    "non-ASCII: Grüße, 漢字, emoji 🙂, a backslash \\ and a } brace {"
)


def test_every_tag_resolves_in_the_scope_argo_gives_it() -> None:
    for path, text in compiled_examples().items():
        assert _scope_problems(yaml.safe_load(text)) == [], path
    hostile = compiled(question=HOSTILE, pipeline=[
        {"agentRef": "qna-agent", "name": "answer", "mode": "map", "prompt": HOSTILE + "x" * 10_000},
        {"agentRef": "qna-agent", "name": "combine", "mode": "reduce"}])  # fmt: skip
    assert _scope_problems(hostile) == []
    assert "{{ x }}" not in yaml.safe_dump(hostile), "user text is never where Argo substitutes"


def test_the_task_parameter_is_small_and_carries_the_text_exactly() -> None:
    task, agents = load_task(QA)
    task.spec.question = HOSTILE
    doc = compile_task(task, agents).to_dict()
    params = {p["name"]: p["value"] for p in workflow_spec(doc)["arguments"]["parameters"]}
    assert RunSpec.decode(params["spec"]).task.question == HOSTILE
    assert decode_text(params["target"]) == task.spec.output_target
    assert len(params["spec"]) < 4096
    task.spec.input, task.spec.input_text = None, "y" * 262_144  # the largest inline input the CRD allows
    big = {
        p["name"]: p["value"]
        for p in workflow_spec(compile_task(task, agents).to_dict())["arguments"]["parameters"]
    }
    assert len(big["spec"]) < 16 * 1024, "compressed: a long input stays a small parameter"


class RecordingServer(EmbeddedModelServer):
    """The embedded server, keeping every chat request's messages as they arrived over HTTP."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.received: list[list[dict[str, Any]]] = []

    def _generation_request(self, body: dict[str, Any], served: Any, chat: bool) -> Any:
        self.received.append(body.get("messages") or [])
        return super()._generation_request(body, served, chat)


def test_hostile_text_reaches_the_model_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiled and run with `aistack run`'s runner, which substitutes tags as strictly as Argo does
    (a second pass over a fan-out's arguments): the question and prompt arrive exactly as written."""
    question, prompt = HOSTILE, "Answer: " + HOSTILE + " " + "z" * 10_000  # 10 KB of text
    task = TaskOrchestration.model_validate(
        {"metadata": {"name": "hostile"},
         "spec": {"inputText": "Tuples are immutable. Lists are mutable.", "question": question,
                  "pipeline": [{"agentRef": "qna-agent", "mode": "map", "prompt": prompt}],
                  "outputTarget": "s3://unused/x/"}}
    )  # fmt: skip
    from aistack.gateway.server import load_agents

    agents = load_agents((ROOT / "tests" / "data" / "extractive-agents.yaml",))
    with RecordingServer(stand_in_engine="extractive") as server:
        monkeypatch.setenv("OLLAMA_HOST", server.url)
        run_task(task, agents, out=tmp_path.as_uri())
    (messages,) = server.received
    user = messages[1]["content"]
    assert f"### Question\n{question}\n\n### Instruction\n{prompt}" in user


def test_the_local_runner_fails_where_argo_fails() -> None:
    """Raw text in a fan-out's argument: Argo's second substitution pass fails on `{{ x }}` and
    rewrites `{{workflow.name}}`; so does the local runner (it never was what made text safe)."""
    scope = {"workflow.parameters.q": "ask {{ x }}", "workflow.name": "wf-1"}
    first = _resolve("{{workflow.parameters.q}} / {{item.shard}}", scope, keep=("item",))
    assert first == "ask {{ x }} / {{item.shard}}"
    with pytest.raises(KeyError, match=r"failed to resolve \{\{ x \}\}"):
        _resolve(first, {**scope, "item.shard": 0})
    assert _resolve(_resolve("{{workflow.parameters.q}}", {"workflow.parameters.q": "{{workflow.name}}"}, ("item",)),
                    scope) == "wf-1"  # fmt: skip
    with pytest.raises(KeyError, match="Argo expression"):
        _resolve("{{=1+1}}", scope)


def test_agent_fields_that_land_in_templates_carry_no_tags() -> None:
    """Agent fields compiled into a stage template (container env, node selector, tolerations) reach
    Argo as they are: a `{{` there is refused at compile time, naming the field; model names and
    images cannot hold one at all (the CRD's patterns)."""
    from aistack.crds.models import OllamaAgentSpec

    task, agents = load_task(QA)
    agents["qna-agent"].spec.env.append(
        type(agents["qna-agent"].spec.env[0])(name="OLLAMA_DEBUG", value="{{ x }}")
    )
    with pytest.raises(
        ValueError, match=r"'qna-agent': spec.env\[3\].value \(OLLAMA_DEBUG\): .* contains '\{\{'"
    ):
        compile_task(task, agents)
    task, agents = load_task(QA)
    agents["qna-agent"].spec.node_selector = {"pool": "{{=1+1}}"}
    with pytest.raises(ValueError, match=r"spec\.nodeSelector"):
        compile_task(task, agents)
    for field_name, value in (("model", "llama{{x}}"), ("image", "ollama/ollama:{{=1+1}}")):
        with pytest.raises(ValueError, match=field_name):
            OllamaAgentSpec.model_validate({"model": "llama3", "role": "qna", field_name: value})
