"""The one YAML loader of `aistack validate`, `aistack run` and the gateway's `--agents`: it reads
manifests as kubectl does (YAML 1.1 scalars, strict duplicate keys) and bounds what a file may
cost (size, alias expansion, message length). Every file here is made by the test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from typer.testing import CliRunner

from aistack.cli import app
from aistack.crds.validation import load_file, validate_object
from aistack.crds.yaml_loader import MAX_FILE_BYTES, YamlLoadError, load_documents

SEED = load_file(ROOT / "crds" / "examples" / "seed.yaml")
TASK = SEED[1]


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("y", True), ("Y", True), ("yes", True), ("on", True), ("ON", True), ("True", True),
        ("n", False), ("N", False), ("no", False), ("off", False), ("FALSE", False),
        ("'y'", "y"), ('"n"', "n"), ("1:30", "1:30"), ("2026-12-01", "2026-12-01"), ("1e3", 1000.0),
        ("0o17", 15), ("017", 15), ("0x1F", 31), ("1_000", 1000), ("~", None), ("yellow", "yellow"),
    ],
)  # fmt: skip
def test_plain_scalars_resolve_as_kubectl_resolves_them(text: str, value: object) -> None:
    (doc,) = load_documents(f"v: {text}\n")
    assert doc == {"v": value} and type(doc["v"]) is type(value)


def test_keys_become_json_strings() -> None:
    assert load_documents("y: 1\n2: b\n") == [{"true": 1, "2": "b"}]


def test_an_unquoted_y_is_a_boolean_where_a_string_is_required(tmp_path: Path) -> None:
    """PyYAML alone reads `y` as a string, so this passed offline and failed on the server."""
    agent = tmp_path / "agent.yaml"
    agent.write_text(
        yaml.safe_dump(SEED[0]).replace("value: '0.7'", "value: y").replace('value: "0.7"', "value: y")
    )
    assert "value: y" in agent.read_text()
    (doc,) = load_file(agent)
    assert [str(i) for i in validate_object(doc)] == [
        "spec.env[0].value: Invalid value: True is not of type 'string'"
    ]


def test_a_repeated_key_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(
        "apiVersion: ai.stack/v1alpha1\nkind: OllamaAgent\nmetadata: {name: a}\nspec:\n  model: x\n  model: y\n"
    )
    with pytest.raises(
        YamlLoadError, match=r"dup\.yaml: not valid YAML: line 6, column 3: duplicate key 'model'"
    ):
        load_file(path)


def test_merge_keys_still_merge() -> None:
    assert load_documents("b: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n") == [
        {"b": {"x": 1, "true": 2}, "d": {"x": 3, "true": 2}}
    ]


def test_a_billion_laughs_fails_fast_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    with pytest.raises(YamlLoadError) as err:
        load_file(path)
    assert str(path) in str(err.value) and "aliases are expanded" in str(err.value)
    assert "\n" not in str(err.value)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "alias bomb" in result.output


def test_a_few_honest_aliases_are_fine() -> None:
    (doc,) = load_documents(billion_laughs(levels=2))  # 10 + 100 + 1000 strings
    assert len(doc["a2"]) == 10 and doc["a2"][0][0] == doc["a0"]


def test_a_recursive_alias_is_rejected() -> None:
    with pytest.raises(YamlLoadError, match="refers to its own anchor"):
        load_documents("a: &x [1, *x]\n")


def test_an_oversize_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("w") as handle:
        handle.write("apiVersion: ai.stack/v1alpha1\nkind: TaskOrchestration\nspec:\n  inputText: ")
        handle.write("x" * (20 * 1024 * 1024))
    with pytest.raises(YamlLoadError, match=r"big\.yaml: 20\.0 MiB is over the 4 MiB limit"):
        load_file(path)


def test_a_large_bad_value_gives_a_short_message(tmp_path: Path) -> None:
    path = tmp_path / "long.yaml"
    task = {**TASK, "spec": {**TASK["spec"], "question": "why? " * (MAX_FILE_BYTES // 6)}}
    path.write_text(yaml.safe_dump(task))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert "spec.question" in line and "is too long" in line and len(line) < 300


def test_special_files_are_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    with pytest.raises(YamlLoadError, match=r"pipe\.yaml: not a regular file"):
        load_file(fifo)
    with pytest.raises(YamlLoadError, match="not a regular file"):
        load_file(tmp_path)


def test_run_and_gateway_files_go_through_the_same_loader(tmp_path: Path) -> None:
    from aistack.gateway.server import load_agents
    from aistack.pipelines.local import load_task

    bomb = tmp_path / "task.yaml"
    bomb.write_text(billion_laughs())
    with pytest.raises(ValueError, match="alias bomb"):
        load_task(bomb)
    with pytest.raises(ValueError, match="alias bomb"):
        load_agents((bomb,))
