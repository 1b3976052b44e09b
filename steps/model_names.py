"""Ollama's model names: `name[:tag]`, the tag `latest` when none is given (`ns/name:tag` too)."""

from __future__ import annotations


def full_name(name: str) -> str:
    """`llama3` -> `llama3:latest`; a name with a tag is left as it is."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def names_model(listed: str | None, model: str) -> bool:
    """Whether a server's listed name (`/api/tags`) is `model`, as asked or in full."""
    return listed in (model, full_name(model))
