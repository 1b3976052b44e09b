"""Where the CLI writes: results to stdout, progress and errors to stderr; one-line errors.

Both consoles print text literally (markup off): paths, regex patterns, task names and model
answers are user text, and `[a-z0-9]` or `[red]` in them must reach the screen as written.
Styling is applied with `rich.text.Text`, never by interpolating into markup."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from aistack.messages import describe, one_line

if TYPE_CHECKING:
    from rich.progress import Progress
    from rich.table import Table

console = Console(stderr=True, markup=False)
out = Console(markup=False)
# "debug": set by `aistack --debug`; "finished": set by a command whose results are all
# written and closed, so the process may end without tearing down its modules (see cli.run)
state = {"debug": False, "finished": False}


def error_line(message: str) -> Text:
    return Text.assemble(("error: ", "bold red"), message)


def say(text: str | Text, stderr: bool = True) -> None:
    """One line, printed as it is: never re-wrapped to the terminal's width (a URI stays whole)."""
    (console if stderr else out).print(text, soft_wrap=True, highlight=False)


def progress_bar() -> Progress:
    from rich.progress import (  # only commands that show progress pay for it
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def summary_table(title: str) -> Table:
    """Two columns, name and value; a value too wide for the terminal is folded, never cut with "…"."""
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    return table


def fail(exc: BaseException) -> None:
    """One clear line and exit code 1; the traceback only with --debug."""
    if state["debug"]:
        traceback.print_exception(exc)
    say(error_line(describe(exc)))
    raise typer.Exit(1)


class OneLineErrors(TyperGroup):
    """The `aistack` group: a usage error (a bad option value, a missing argument) is one line,
    `error: ... (see 'aistack etl --help')`, like every other error, instead of Typer's panel
    (which wraps at the terminal's width)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # the base of Typer's (vendored) click exceptions
            if type(e).__name__ == "NoArgsIsHelpError":  # `aistack crds` alone: its help, as before
                sys.exit(super().main(args, prog_name, complete_var, standalone_mode=True, **extra))
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            say(error_line(one_line(e.format_message()).rstrip(".") + hint))
            sys.exit(e.exit_code)
        except typer.Abort:
            say(error_line("aborted"))
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)
