"""aistack: batch LLM pipelines on Kubernetes (front door: CLI, version, settings)."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("aistack")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

# `aistack.operator` lives in the top-level folder `operator/`, which has no __init__.py so
# that it can never shadow the stdlib `operator` (see operator/README.md). A wheel holds it
# as aistack/operator/, where the import system finds it; setuptools' editable finder cannot
# map a namespace subpackage, so in a source checkout the checkout root joins our __path__
# (every other layer already maps to the same folders there).
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "operator").is_dir() and (_checkout / "pyproject.toml").is_file():
    __path__.append(str(_checkout))
