"""The typed API: generated CRDs, offline validation (schema + real CEL), the bad-CR catalogue."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT
from typer.testing import CliRunner

from aistack.cli import app
from aistack.crds import docs, schema
from aistack.crds.models import OllamaAgent, TaskOrchestration
from aistack.crds.validation import InvalidResourceError, load_file, parse, validate_object

SEED = load_file(ROOT / "crds" / "examples" / "seed.yaml")
AGENT, TASK = SEED[0], SEED[1]


def example_files() -> list[Path]:
    found = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .venv, .venv-infra, .git
        found += [Path(top) / f for f in files if f.endswith(".yaml")]
    return sorted(p for p in found if p.parent.name != "crds" and "ai.stack/v1alpha1" in p.read_text())


def test_generated_crds_and_docs_are_up_to_date() -> None:
    assert schema.generate(check=True) == [], "run `aistack crds generate`"
    assert not docs.generate(check=True), "run `aistack crds generate`"


@pytest.mark.parametrize("kind", ["OllamaAgent", "TaskOrchestration"])
def test_crds_are_structural_v1_with_status_and_niceties(kind: str) -> None:
    crd = yaml.safe_load(schema.crd_path(kind).read_text())
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert "aistack" in crd["spec"]["names"]["categories"] and crd["spec"]["names"]["shortNames"]
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Age"}

    def walk(node: dict[str, Any], path: str) -> None:
        # structural: every node has a type; no $ref/anyOf/oneOf; properties and additionalProperties exclusive
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "not", "title", "$defs"):
            assert banned not in node, f"{path} has {banned}"
        assert not ("properties" in node and "additionalProperties" in node), path
        for key, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{key}")
        if "items" in node:
            walk(node["items"], f"{path}[*]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{*}}")

    walk(version["schema"]["openAPIV3Schema"], kind)


def test_seed_examples_validate_verbatim() -> None:
    assert [validate_object(d) for d in SEED] == [[], [], []]
    task = parse(TASK)
    assert isinstance(task, TaskOrchestration)
    assert [s.stage_name for s in task.spec.pipeline] == ["qna-agent", "summarizer-agent"]
    assert task.spec.chunking.max_tokens == 512  # defaulted as the API server would
    agent = parse(AGENT)
    assert isinstance(agent, OllamaAgent) and agent.spec.resources.gpu == 1 and agent.spec.mode == "batch"


def test_every_example_cr_in_the_repository_validates() -> None:
    files = example_files()
    assert files, "examples exist"
    for path in files:
        for doc in load_file(path):
            if doc.get("apiVersion") != "ai.stack/v1alpha1":  # e.g. a Kustomization patching them
                continue
            assert validate_object(doc) == [], f"{path}: {doc.get('kind')}/{doc['metadata']['name']}"


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    node = obj
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return obj


_DELETE = object()

# (base, path, value, expected field path, expected words in the message)
CATALOGUE: list[tuple[dict[str, Any], str, Any, str, str]] = [
    (AGENT, "spec.model", _DELETE, "spec.model", "Required"),
    (AGENT, "spec.model", "", "spec.model", "Invalid value"),
    (AGENT, "spec.model", 42, "spec.model", "is not of type 'string'"),
    (AGENT, "spec.role", "poet", "spec.role", "Unsupported value 'poet'"),
    (AGENT, "spec.role", _DELETE, "spec.role", "Required"),
    (AGENT, "spec.mode", "daemon", "spec.mode", "Unsupported value 'daemon'"),
    (AGENT, "spec.resources.gpu", -1, "spec.resources.gpu", "minimum"),
    (AGENT, "spec.resources.gpu", "one", "spec.resources.gpu", "not of type 'integer'"),
    (AGENT, "spec.resources.memory", "8 gigs", "spec.resources.memory", "should match"),
    (AGENT, "spec.resources.cpu", "-2", "spec.resources.cpu", "should match"),
    (AGENT, "spec.endpoint", "summarize", "spec.endpoint", "should match"),
    (AGENT, "spec.env.0.name", "not valid!", "spec.env[0].name", "should match"),
    (AGENT, "spec.env.0.value", 0.7, "spec.env[0].value", "not of type 'string'"),
    (
        AGENT,
        "spec.env",
        [{"name": "SEED", "value": "1"}, {"name": "SEED", "value": "2"}],
        "spec",
        "env names must be unique",
    ),
    (AGENT, "spec.replicas", 2, "spec", "replicas is only valid with mode: service"),
    (AGENT, "spec.keepAlive", "forever", "spec.keepAlive", "should match"),
    (AGENT, "spec.numParallel", 0, "spec.numParallel", "minimum"),
    (AGENT, "spec.unknownField", True, "spec", "unknown field(s) unknownField"),
    (AGENT, "metadata.name", "Summarizer_Agent", "metadata.name", "RFC 1123 subdomain"),
    # names the API server accepts (subdomains) but whose derived objects could never be created
    (AGENT, "metadata.name", "a" * 57, "", "metadata.name must be at most 56 characters"),
    (AGENT, "metadata.name", "summarizer.agent", "", "metadata.name must not contain '.'"),
    (TASK, "metadata.name", "t" * 64, "", "metadata.name must be at most 63 characters"),
    (TASK, "metadata.name", "x" * 254, "metadata.name", "RFC 1123 subdomain"),
    (TASK, "metadata.name", "answer.and.summarize", "", "metadata.name must not contain '.'"),
    (AGENT, "apiVersion", "ai.stack/v1", "apiVersion", "Unsupported value"),
    (TASK, "spec.pipeline", [], "spec.pipeline", "Invalid value"),
    (TASK, "spec.pipeline", _DELETE, "spec.pipeline", "Required"),
    (TASK, "spec.pipeline.0.agentRef", "QnA_Agent", "spec.pipeline[0].agentRef", "should match"),
    (TASK, "spec.pipeline.1.agentRef", "qna-agent", "spec", "stage names must be unique"),
    (TASK, "spec.pipeline.0.mode", "scatter", "spec.pipeline[0].mode", "Unsupported value 'scatter'"),
    (
        TASK,
        "spec.pipeline.1.dependsOn",
        ["missing-stage"],
        "spec",
        "dependsOn must name stages of this pipeline",
    ),
    (TASK, "spec.pipeline.0.dependsOn", ["summarizer-agent"], "spec.pipeline", "dependsOn forms a cycle"),
    (TASK, "spec.pipeline.1.dependsOn", ["summarizer-agent"], "spec.pipeline[1]", "cannot depend on itself"),
    (TASK, "spec.pipeline.0.rounds", 3, "spec.pipeline[0]", "rounds is only valid with mode: chat"),
    (TASK, "spec.pipeline.0.mode", "chat", "spec.pipeline[0]", "mode: chat needs participants"),
    (TASK, "spec.pipeline.0.labels", ["only-one"], "spec.pipeline[0].labels", "Invalid value"),
    (
        TASK,
        "spec.chunking",
        {"maxTokens": 256, "overlapTokens": 256},
        "spec.chunking",
        "overlapTokens must be less than maxTokens",
    ),
    (TASK, "spec.chunking", {"maxTokens": 32}, "spec.chunking", "overlapTokens must be less than maxTokens"),
    (TASK, "spec.chunking", {"maxTokens": 4}, "spec.chunking.maxTokens", "minimum"),
    (TASK, "spec.chunking", {"encoding": "o200k_base"}, "spec.chunking.encoding", "Unsupported value"),
    (TASK, "spec.outputTarget", "http://example.com/out", "spec.outputTarget", "should match"),
    (TASK, "spec.outputTarget", "s3://Bad_Bucket/x", "spec.outputTarget", "should match"),
    (TASK, "spec.outputTarget", _DELETE, "spec.outputTarget", "Required"),
    (TASK, "spec.inputText", _DELETE, "spec", "exactly one of inputText or input"),
    (TASK, "spec.input", {"uri": "s3://bucket/docs/"}, "spec", "exactly one of inputText or input"),
    (TASK, "spec.schedule", {"cron": "every day"}, "spec.schedule.cron", "should match"),
    (TASK, "spec.schedule", {"cron": "0 3 * *"}, "spec.schedule.cron", "should match"),
    (
        TASK,
        "spec.schedule",
        {"cron": "0 3 * * *", "concurrencyPolicy": "Sometimes"},
        "spec.schedule.concurrencyPolicy",
        "Unsupported value",
    ),
    (TASK, "spec.parallelism", 0, "spec.parallelism", "minimum"),
    (TASK, "spec.timeout", "two hours", "spec.timeout", "should match"),
    (TASK, "spec.retries", {"limit": -1}, "spec.retries.limit", "minimum"),
    (TASK, "spec.errorBudgetPercent", 150, "spec.errorBudgetPercent", "maximum"),
    (TASK, "spec.cache", {"policy": "Sometimes"}, "spec.cache.policy", "Unsupported value"),
]


@pytest.mark.parametrize(
    ("base", "path", "value", "field", "words"), CATALOGUE, ids=[f"{c[1]}={c[2]!r}"[:60] for c in CATALOGUE]
)
def test_bad_resources_are_rejected_naming_the_field(
    base: dict[str, Any], path: str, value: Any, field: str, words: str
) -> None:
    bad = _set(base, path, value)
    issues = validate_object(bad)
    assert issues, f"{path}={value!r} was accepted"
    assert any(i.path == field and words in i.message for i in issues), [str(i) for i in issues]


def test_catalogue_is_large_and_distinct() -> None:
    assert len({(c[1], repr(c[2])) for c in CATALOGUE}) == len(CATALOGUE) >= 30


def test_input_by_uri_and_chat_stage_are_valid() -> None:
    ok = _set(TASK, "spec.inputText", _DELETE)
    ok["spec"]["input"] = {"uri": "s3://corpus/docs/"}
    ok["spec"]["pipeline"] = [
        {
            "agentRef": "qna-agent",
            "name": "debate",
            "mode": "chat",
            "participants": ["summarizer-agent"],
            "rounds": 2,
            "judgeRef": "qna-agent",
        },
        {"agentRef": "summarizer-agent", "mode": "reduce", "dependsOn": ["debate"]},
    ]
    ok["spec"]["schedule"] = {"cron": "0 3 * * *", "timezone": "Europe/Paris"}
    assert validate_object(ok) == []


def test_parse_raises_with_every_issue() -> None:
    bad = _set(_set(TASK, "spec.parallelism", 0), "spec.outputTarget", "ftp://x")
    with pytest.raises(
        InvalidResourceError,
        match=r'TaskOrchestration "answer-and-summarize" is invalid: .*spec.outputTarget.*spec.parallelism',
    ):
        parse(bad)


def test_cli_validate_prints_field_paths(tmp_path: Path) -> None:
    good = CliRunner().invoke(app, ["validate", str(ROOT / "crds" / "examples" / "seed.yaml")])
    assert good.exit_code == 0 and good.output.count(": valid") == 3
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(yaml.safe_dump(_set(TASK, "spec.chunking", {"maxTokens": 100, "overlapTokens": 100})))
    bad = CliRunner().invoke(app, ["validate", str(bad_file)])
    assert bad.exit_code == 1
    assert (
        "TaskOrchestration/answer-and-summarize: spec.chunking: overlapTokens must be less than maxTokens"
        in bad.output
    )


def test_a_service_agent_name_must_start_with_a_letter() -> None:
    """Its Service is named after it, and Service names are DNS-1035 labels."""
    agent = _set(_set(AGENT, "metadata.name", "1-summarizer"), "spec.mode", "service")
    assert [str(i) for i in validate_object(agent)] == [
        "metadata.name must start with a letter in mode: service (the Service <name> is a DNS-1035 label)"
    ]
    assert validate_object(_set(AGENT, "metadata.name", "1-summarizer")) == []  # batch: no Service


def test_duplicate_stage_names_are_one_error_not_a_false_cycle() -> None:
    dup = _set(TASK, "spec.pipeline.1.name", "qna-agent")
    assert [str(i) for i in validate_object(dup)] == [
        "spec: stage names must be unique (a stage's name defaults to its agentRef)"
    ]
    selfish = _set(TASK, "spec.pipeline.0.dependsOn", ["qna-agent"])
    assert [str(i) for i in validate_object(selfish)] == [
        "spec.pipeline[0]: a stage cannot depend on itself (its name defaults to its agentRef)"
    ]


def test_messages_stay_short_whatever_the_value() -> None:
    huge = _set(TASK, "spec.question", "q" * 5_000_000)
    (issue,) = validate_object(huge)
    assert issue.path == "spec.question" and len(str(issue)) < 200, str(issue)[:300]
    many = _set(TASK, "spec.chunking", {f"field{i}": i for i in range(5000)})
    with pytest.raises(InvalidResourceError) as err:
        parse(many)
    assert len(str(err.value)) < 1000


def test_a_long_name_in_a_message_is_cut_with_its_count_whole() -> None:
    from aistack.crds.yaml_loader import short_text

    assert short_text("agent-1") == "agent-1"
    cut = short_text("x" * 500, 60)
    assert cut.startswith("xxx") and cut.endswith("... (502 chars)"), cut  # repr's length, ")" kept
    assert len(cut) <= 60
