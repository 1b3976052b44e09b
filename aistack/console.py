"""Where the CLI writes: results to stdout, progress and errors to stderr; one-line errors."""

from __future__ import annotations

import traceback

import typer
from rich.console import Console

console = Console(stderr=True)
out = Console()
state = {"debug": False}  # set by `aistack --debug`


def fail(exc: BaseException) -> None:
    """One clear line and exit code 1; the traceback only with --debug."""
    if state["debug"]:
        traceback.print_exception(exc)
    message = str(exc) or type(exc).__name__
    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(1)
