"""Field paths as the API server writes them in its messages: `spec.pipeline[0].mode`.

On its own (no imports): the CLI's error lines use it at start-up, the validator for every issue.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def field_path(parts: Iterable[Any]) -> str:
    """`spec`, `pipeline`, 0, `mode` -> `spec.pipeline[0].mode`."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
