"""The real tools that check infra/: kubectl (kustomize) and checkov, from `make infra-tools`."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml
from conftest import ROOT

INFRA = ROOT / "infra"
TOOLS = Path(os.environ.get("AISTACK_INFRA_TOOLS", ROOT / ".venv-infra" / "bin"))


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `make infra-tools` (make test does)")
    return path


@functools.cache
def kustomize(directory: Path) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize DIR` with the real kubectl; the built objects."""
    run = subprocess.run(
        [str(tool("kubectl")), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    if run.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory.relative_to(ROOT)} failed:\n{run.stderr}")
    return tuple(d for d in yaml.safe_load_all(run.stdout) if d)


def kustomization_dirs() -> list[Path]:
    """Every directory of the repository that holds a kustomization (kustomization.yaml, or
    `Kustomization`, which `kubectl apply -f DIR` skips); venvs, .git and build outputs aside."""
    found = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [
            d for d in dirs if not d.startswith(".") and d not in ("build", "dist", "out")
        ]  # not sources
        if {"kustomization.yaml", "Kustomization"} & set(files):
            found.append(Path(top))
    return sorted(found)


def by_kind(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def checkov(framework: str) -> dict[str, Any]:
    """checkov over infra/ for one framework: {"summary", "failed", "skipped"} from its JSON report.
    No network: --skip-download keeps it from asking Prisma Cloud for guidelines."""
    env = {
        **os.environ,
        "PATH": f"{TOOLS}{os.pathsep}{os.environ.get('PATH', '')}",  # the kustomize framework runs kubectl
        "CHECKOV_PARALLELIZATION_TYPE": "none",  # deterministic, and no worker pipes to break
    }
    command = [
        str(tool("checkov")),
        "-d",
        str(INFRA),
        "--framework",
        framework,
        "--skip-download",
        "-o",
        "json",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(
            f"checkov --framework {framework}: no JSON report ({e}):\n{run.stderr[-3000:]}"
        ) from e
    reports = report if isinstance(report, list) else [report]
    merged: dict[str, Any] = {"summary": [r["summary"] for r in reports], "failed": [], "skipped": []}
    for r in reports:
        merged["failed"] += r["results"].get("failed_checks", [])
        merged["skipped"] += r["results"].get("skipped_checks", [])
    return merged
