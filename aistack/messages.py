"""Error text a person reads, the same in the CLI and the gateway: one line, `field.path: what is
wrong`, never a pydantic dump (no "1 validation error for ...", no errors.pydantic.dev URL)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from aistack.crds.paths import field_path

MESSAGE_LIMIT = 2000  # characters: a message quoting a huge value is cut, never a screenful
ISSUE_LIMIT = 5  # field problems listed in one message; the rest are counted


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text` with every run of whitespace (newlines included) made one space, cut at `limit`."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    return f"{flat[:limit]}… ({len(flat) - limit} more characters)"


def issues(errors: Iterable[dict[str, Any]]) -> list[str]:
    """pydantic (or FastAPI) error dicts as `field.path: what is wrong`, one line each."""
    return [
        one_line(f"{field_path(e['loc'])}: {e['msg']}" if e.get("loc") else str(e["msg"]), 500)
        for e in errors
    ]


def joined(problems: list[str]) -> str:
    """Several problems in one line: the first few, then how many more."""
    shown = "; ".join(problems[:ISSUE_LIMIT])
    more = len(problems) - ISSUE_LIMIT
    return f"{shown}; and {more} more" if more > 0 else shown


def describe(exc: BaseException) -> str:
    """One line saying what went wrong: the exception's own message, or for a pydantic
    ValidationError, its problems by field path."""
    # a ValidationError exists only once pydantic is imported: commands that never use it
    # (`aistack etl`) do not pay its import for this check
    core = sys.modules.get("pydantic_core")
    if core is not None and isinstance(exc, core.ValidationError):
        return one_line(f"invalid {exc.title}: {joined(issues(exc.errors(include_url=False)))}")
    return one_line(str(exc)) or type(exc).__name__
