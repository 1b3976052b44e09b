"""aistack: batch LLM pipelines on Kubernetes (front door: CLI, version, settings)."""

from pathlib import Path


def __getattr__(name: str) -> str:
    """`aistack.__version__`, read from the installed metadata on first use (importlib.metadata
    costs every command ~20 ms at start-up; only --version and the gateway need it)."""
    if name != "__version__":
        raise AttributeError(f"module 'aistack' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("aistack")
    except PackageNotFoundError:  # running from a source tree without an install
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value


# `aistack.operator` lives in the top-level folder `operator/`, which has no __init__.py so
# that it can never shadow the stdlib `operator` (see operator/README.md). A wheel holds it
# as aistack/operator/, where the import system finds it; setuptools' editable finder cannot
# map a namespace subpackage, so in a source checkout the checkout root joins our __path__
# (every other layer already maps to the same folders there).
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "operator").is_dir() and (_checkout / "pyproject.toml").is_file():
    __path__.append(str(_checkout))
