"""`aistack doctor`: the command (the checks are aistack.doctor, imported when it runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def doctor_command(
    namespace: Annotated[
        str | None, typer.Option("-n", "--namespace", help="Where tasks run (default: the context's).")
    ] = None,
    task_file: Annotated[
        Path | None, typer.Option("--task", help="Check this TaskOrchestration's needs and agents too.")
    ] = None,
    kubeconfig: Annotated[str | None, typer.Option(help="Default: $KUBECONFIG or ~/.kube/config.")] = None,
    operator_namespace: Annotated[str, typer.Option(help="Where the operator runs.")] = "aistack-system",
) -> None:
    """Preflight the current cluster for aistack: one line per check, with the fix for each gap."""
    from rich.table import Table
    from rich.text import Text

    from aistack.console import fail, out
    from aistack.doctor import FAIL, OK, WARN, Options, default_namespace, diagnose

    try:
        options = Options(
            namespace=namespace or default_namespace(kubeconfig), operator_namespace=operator_namespace
        )
        if task_file is not None:
            from aistack.pipelines.local import load_task

            options.task, options.agents = load_task(task_file)
        findings = diagnose(kubeconfig, options)
    except Exception as exc:
        fail(exc)
        return
    table = Table(title=f"aistack doctor: namespace {options.namespace}", show_lines=False)
    for column in ("check", "", "found", "fix"):
        table.add_column(column, overflow="fold")
    style = {OK: "green", WARN: "yellow", FAIL: "bold red"}
    for f in findings:
        # the consoles print text literally (markup off): the status is styled as a Text
        table.add_row(f.check, Text(f.status, style=style[f.status]), f.found, f.fix)
    out.print(table)
    failed = sum(f.status == FAIL for f in findings)
    out.print(f"{failed} problem(s), {sum(f.status == WARN for f in findings)} warning(s)", highlight=False)
    if failed:
        raise typer.Exit(1)
