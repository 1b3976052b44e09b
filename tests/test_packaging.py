"""The package layout of DESIGN.md: top-level folders installed as aistack.* subpackages."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT

SUBPACKAGES = ["aistack.crds", "aistack.etl", "aistack.steps", "aistack.pipelines", "aistack.operator"]


def _python(code: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_stdlib_operator_is_not_shadowed_from_the_repository_root() -> None:
    # `python -c` puts the current directory first on sys.path: the worst case.
    code = (
        "import operator, enum, aistack.operator, aistack.etl.chunking;"
        "assert hasattr(operator, 'or_'), operator.__file__;"
        "print(operator.__file__)"
    )
    assert "site-packages" not in _python(code, ROOT)  # the stdlib's file, not ours
    assert _python(code, ROOT).endswith("operator.py")


def test_editable_install_maps_folders_to_subpackages() -> None:
    code = "import importlib;" + ";".join(
        f"print(importlib.import_module('{name}').__path__[0])" for name in SUBPACKAGES
    )
    paths = _python(code, Path("/"))
    for folder in ["crds", "etl", "steps", "pipelines", "operator"]:
        assert str(ROOT / folder) in paths


def test_built_wheel_contains_and_imports_every_layer(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "aistack/etl/chunking.py" in names
    assert "aistack/cli.py" in names
    assert "aistack/gateway/app.py" in names
    assert not any(n.startswith(("etl/", "operator/", "crds/")) for n in names), "no top-level folders"
    # A pure-Python wheel is importable as a zip: prove the imports resolve inside it.
    out = _python(
        "import aistack.etl.chunking as c, operator; print(c.__file__); print(operator.__file__)",
        tmp_path,
        env={"PYTHONPATH": str(wheel), "PATH": "/usr/bin:/bin"},
    )
    assert str(wheel) in out.splitlines()[0]
    assert "aistack" not in out.splitlines()[1]


def _wheel(into: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(into),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = into.glob("aistack-*.whl")
    return wheel


def _clean_venv(tmp_path: Path, wheel: Path) -> Path:
    """A fresh virtualenv outside the checkout with the wheel installed. Its dependencies are
    reached through a .pth line to this venv's site-packages (nothing downloads; the editable
    install's own .pth there is not processed, so the checkout is never imported)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    uv = Path(sys.executable).with_name("uv")
    subprocess.run(
        [
            str(uv),
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--python",
            str(venv / "bin" / "python"),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    (site,) = (venv / "lib").glob("python3.*/site-packages")
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "kopf").is_dir())
    (site / "dependencies.pth").write_text(f"{deps}\n")
    return venv


def test_a_wheel_in_a_clean_venv_runs_the_example_outside_the_checkout(tmp_path: Path) -> None:
    venv = _clean_venv(tmp_path, _wheel(tmp_path / "dist"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "task.yaml").write_text((ROOT / "examples" / "question-answering" / "task.yaml").read_text())
    # the test's own agents: the embedded extractive engine answers at once, whatever the example's models
    (elsewhere / "agents.yaml").write_text(
        "apiVersion: ai.stack/v1alpha1\nkind: OllamaAgent\nmetadata: {name: qna-agent}\n"
        "spec: {model: aistack-extractive, role: qna, numParallel: 4}\n"
    )
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "OLLAMA_HOST": "http://127.0.0.1:9",
    }
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import aistack.pipelines.runtime as r; print(r.__file__); print(r.DATASETS_DIR)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert where[0].startswith(str(venv)) and where[1].startswith(str(venv)), where
    out = tmp_path / "out"
    run = subprocess.run(
        [str(venv / "bin" / "aistack"), "run", "task.yaml", "--out", f"file://{out}"],
        cwd=elsewhere, env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "A list comprehension consists of" in run.stdout
    (summary,) = out.glob("python-docs-qna-*/summary.json")
    # the example's page of the bundled corpus, read from the installed package
    assert json.loads(summary.read_text())["etl"]["documents"] == 1
    # pointed at a directory without the dataset: one line that says where it looked and how to fix it
    empty = tmp_path / "no-datasets"
    empty.mkdir()
    missing = subprocess.run(
        [str(venv / "bin" / "aistack"), "run", "task.yaml", "--out", f"file://{out}"],
        cwd=elsewhere, env={**env, "AISTACK_DATASETS": str(empty), "COLUMNS": "300"}, capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode == 1
    (line,) = [ln for ln in missing.stderr.splitlines() if ln.startswith("error")]
    assert f"input.dataset 'python-docs' is not in AISTACK_DATASETS={empty}" in line, missing.stderr
