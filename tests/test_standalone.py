"""The repository stands on its own: nothing tracked reads or links a path outside it (one
optional exception: Argo's JSON schema beside the checkout), and compiled Workflows are checked
either way."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import pydantic
import pytest
import yaml
from argo_schema import SCHEMA_BESIDE, argo_validate, validate_with_hera
from conftest import ROOT

OUTSIDE = re.compile(r"\.\./shared|parent\s*/\s*\"shared\"|/work/|ROOT\.parent|parents\[2\]")
ALLOWED = {
    ("tests/argo_schema.py", 'SCHEMA_BESIDE = ROOT.parent / "shared" / "schemas" / "argo" / "schema.json"')
}


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [ROOT / p for p in listed.decode().split("\0") if p]
    return [
        p
        for p in paths
        if p.is_file() and not p.name.endswith((".png", ".lock")) and "datasets" not in p.parts
    ]


def test_no_tracked_file_reaches_outside_the_repository() -> None:
    found = []
    for path in tracked_text_files():
        if path == Path(__file__).resolve():
            continue  # this test names the patterns it looks for
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for line in text.splitlines():
            if OUTSIDE.search(line) and (str(path.relative_to(ROOT)), line.strip()) not in ALLOWED:
                found.append(f"{path.relative_to(ROOT)}: {line.strip()[:120]}")
    assert found == []


def test_markdown_links_stay_inside() -> None:
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"`[^`\n]*`", "", path.read_text())  # code spans are not links
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if re.match(r"[a-z]+://", target):
                continue
            resolved = (path.parent / target).resolve()
            assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{path.name} links {target}"


def test_compiled_workflows_pass_the_hera_check_and_the_schema_when_present() -> None:
    for path in sorted((ROOT / "argo").glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            validate_with_hera(obj)
            if SCHEMA_BESIDE.is_file():
                assert argo_validate(obj) == "argo-json-schema"


def test_the_hera_check_catches_what_the_schema_would() -> None:
    obj = yaml.safe_load((ROOT / "argo" / "question-answering.yaml").read_text())
    assert argo_validate(obj, schema=None) == "hera-models"
    typo = copy.deepcopy(obj)
    typo["spec"]["templates"][0]["retryStrategyy"] = {"limit": "3"}
    with pytest.raises(AssertionError, match=r"\.spec\.templates\[0\]\.retryStrategyy: unknown field"):
        argo_validate(typo, schema=None)
    wrong_type = copy.deepcopy(obj)
    wrong_type["spec"]["parallelism"] = "many"
    with pytest.raises(pydantic.ValidationError):
        argo_validate(wrong_type, schema=None)
