"""The package layout of DESIGN.md: top-level folders installed as aistack.* subpackages."""

from __future__ import annotations

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
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("aistack-*.whl")
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
