"""Messages a person can read: user text printed literally (rich markup never eats `[a-z0-9]` or
`[red]`), every error one line (also in a narrow terminal, also for usage errors), validation
problems as `field.path: what is wrong` without pydantic's dump, whole URIs in summaries, and a
plain path accepted wherever a URI is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from conftest import ROOT
from pydantic import ValidationError
from typer.testing import CliRunner

from aistack.cli import app
from aistack.crds.models import TaskOrchestrationSpec
from aistack.messages import describe, one_line

QA = ROOT / "examples" / "question-answering" / "task.yaml"


def aistack(*args: str, columns: int = 30, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command in a narrow terminal (rich reads COLUMNS when it starts)."""
    return subprocess.run(
        [sys.executable, "-m", "aistack", *args],
        env={**os.environ, "COLUMNS": str(columns), **env},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_an_error_is_one_literal_line_in_a_narrow_terminal(tmp_path: Path) -> None:
    source = tmp_path / "[red]corpus" / "[a-z0-9]*.txt"
    done = aistack("etl", str(source), "--out", str(tmp_path / "out"))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and str(source) in lines[-1], done.stderr
    assert len(lines[-1]) > 30, "longer than the terminal, and still one line"
    assert all("error" not in line for line in lines[:-1]), done.stderr


def test_usage_errors_are_one_line_too() -> None:
    done = aistack("etl", "x", "--out", "y", "--chunk-tokens", "many")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: Invalid value for '--chunk-tokens': 'many' is not a valid int (see 'aistack etl --help')"
    ]
    missing = aistack("etl")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: Missing argument 'source' (see 'aistack etl --help')"
    assert "Usage: aistack" in aistack("crds").stdout, "a group alone still shows its help"


def test_validate_prints_patterns_and_paths_as_written(tmp_path: Path) -> None:
    where = tmp_path / "[red]agents"
    where.mkdir()
    bad = where / "agent.yaml"
    bad.write_text(
        "apiVersion: ai.stack/v1alpha1\nkind: OllamaAgent\nmetadata: {name: ok}\n"
        "spec: {model: m, role: summarizer, endpoint: 'no-slash'}\n"
    )
    result = CliRunner().invoke(app, ["validate", str(bad), str(where / "[bold]missing.yaml")])
    assert result.exit_code == 1
    assert (
        f"{bad}: OllamaAgent/ok: spec.endpoint: Invalid value 'no-slash': should match '^/" in result.output
    )
    assert f"error: {where / '[bold]missing.yaml'}: No such file or directory" in result.output


def test_validation_errors_are_field_paths_not_pydantic_dumps() -> None:
    with pytest.raises(ValidationError) as caught:
        TaskOrchestrationSpec.model_validate(
            {"inputText": "x", "pipeline": [{"agentRef": "a"}], "outputTarget": "/plain/path"}
        )
    assert "validation error for" in str(caught.value) and "errors.pydantic.dev" in str(caught.value)
    message = describe(caught.value)
    assert message.startswith("invalid TaskOrchestrationSpec: outputTarget: String should match pattern")
    assert "\n" not in message and "pydantic.dev" not in message and "input_value" not in message
    assert one_line("a\n  b\tc") == "a b c"
    assert one_line("x" * 50, limit=10) == "xxxxxxxxxx… (40 more characters)"


def test_run_takes_a_plain_out_path_and_prints_the_whole_uri(tmp_path: Path) -> None:
    target = tmp_path / "a-rather-long-directory-name-for-the-outputs" / "[red] demo"
    done = aistack(
        "run",
        str(QA),
        "--out",
        str(target),
        "--stand-in",
        "extractive",
        columns=40,
        OLLAMA_HOST="http://127.0.0.1:9",
    )
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("outputs: ")]
    uri = line.removeprefix("outputs: ")
    assert uri.startswith(target.as_uri() + "/") and "…" not in done.stdout
    assert (Path(unquote(uri.removeprefix("file://"))) / "summary.json").is_file()
    assert any(line.startswith("A: ") for line in done.stdout.splitlines())


def test_a_bad_out_is_one_line_naming_the_option() -> None:
    result = CliRunner().invoke(app, ["run", str(QA), "--out", "s3://Not_A_Bucket/x"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: --out: 's3://Not_A_Bucket/x' is not a path, a file:///absolute/path or an s3://bucket/prefix URI"
    )


def test_run_reads_the_users_own_paths_but_include_never_escapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # the embedded engine stands in
    corpus = tmp_path / "corpus"
    (corpus / "docs").mkdir(parents=True)
    (corpus / "docs" / "tuples.txt").write_text("Tuples are immutable sequences. " * 20)
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "key.txt").write_text("secret")
    (corpus / "link").symlink_to(tmp_path / "private")
    agents = ROOT / "tests" / "data" / "extractive-agents.yaml"

    def run(name: str, task_input: str) -> Any:
        task = tmp_path / f"{name}.yaml"
        task.write_text(
            f"apiVersion: ai.stack/v1alpha1\nkind: TaskOrchestration\nmetadata: {{name: {name}}}\n"
            f"spec:\n  input: {task_input}\n  question: What are tuples?\n"
            "  pipeline: [{agentRef: qna-agent, mode: map}]\n  outputTarget: s3://unused/x/\n"
        )
        return CliRunner().invoke(
            app, ["run", str(task), "--agents", str(agents), "--out", str(tmp_path / "out")]
        )

    escaped = run("escaped", "{dataset: python-docs, include: '../../../etc/passwd'}")
    assert escaped.exit_code == 1
    assert escaped.output.strip() == (
        "error: spec.input.include: '../../../etc/passwd' has a '..' segment; it must stay inside the dataset"
    )
    linked = run("linked", f"{{uri: '{corpus.as_uri()}', include: link/key.txt}}")
    assert linked.exit_code == 1
    assert "spec.input.include: 'link/key.txt' leads out of the dataset through a symlink" in linked.output
    mine = run("mine", f"{{uri: '{corpus.as_uri()}', include: 'docs/*.txt'}}")
    assert mine.exit_code == 0, mine.output
    assert "A: " in mine.output and "immutable" in mine.output
