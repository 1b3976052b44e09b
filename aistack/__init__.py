"""aistack: batch LLM pipelines on Kubernetes (front door: CLI, version, settings)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aistack")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
