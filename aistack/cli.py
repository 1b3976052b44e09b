"""The `aistack` command line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from aistack.console import (
    OneLineErrors,
    console,
    error_line,
    fail,
    out,
    say,
    state,
    summary_table,
)
from aistack.doctor_command import doctor_command
from aistack.etl_command import etl_command
from aistack.gateway.command import gateway_command
from aistack.models_command import Engine, models_app
from aistack.operator_command import operator_app

app = typer.Typer(
    name="aistack",
    help="Batch LLM pipelines: chunk and tokenize corpora, run Ollama agents, land Parquet; locally or on Argo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
)


def _version(value: bool) -> None:
    if value:
        from aistack import __version__

        out.print(f"aistack {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    state["debug"] = debug


app.command("etl")(etl_command)


crds_app = typer.Typer(help="The OllamaAgent and TaskOrchestration CRDs.", no_args_is_help=True)
app.add_typer(crds_app, name="crds")


@crds_app.command("generate")
def crds_generate(
    check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 if a file is stale.")] = False,
) -> None:
    """Regenerate crds/*.yaml and docs/ollama-crd-spec.md from the pydantic models."""
    from aistack.crds import docs, schema

    stale = [str(p) for p in schema.generate(check=check)]
    if docs.generate(check=check):
        stale.append(str(docs.DOC_PATH))
    verb = "stale" if check else "written"
    for path in stale:
        out.print(f"{verb}: {path}")
    if not stale:
        out.print("up to date")
    if check and stale:
        raise typer.Exit(1)


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="YAML files of OllamaAgent/TaskOrchestration objects.")],
) -> None:
    """Check custom resources offline against the CRD schemas and CEL rules, as the API server would."""
    from aistack.crds.validation import load_file, validate_object
    from aistack.messages import describe, one_line

    failed = False
    for path in files:
        try:
            documents = load_file(path)
        except (OSError, ValueError) as exc:
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else describe(exc)
            say(error_line(message if message.startswith(str(path)) else f"{path}: {message}"))
            failed = True
            continue
        for doc in documents:
            kind = doc.get("kind", "?") if isinstance(doc, dict) else "?"
            name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc, dict) else "?"
            issues = validate_object(doc)
            if issues:
                failed = True
                for issue in issues:
                    say(Text(one_line(f"{path}: {kind}/{name}: {issue}"), style="red"), stderr=False)
            else:
                say(f"{path}: {kind}/{name}: valid", stderr=False)
    if failed:
        raise typer.Exit(1)


app.add_typer(models_app, name="models")


@app.command("run")
def run_command(
    task_file: Annotated[Path, typer.Argument(help="A TaskOrchestration YAML file.")],
    agents: Annotated[
        Path | None, typer.Option(help="OllamaAgents YAML (default: agents.yaml beside the task).")
    ] = None,
    out_uri: Annotated[
        str | None, typer.Option("--out", help="Outputs root (default: ./out/<task>); replaces outputTarget.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Parallel shards.", min=1)] = 4,
    stand_in: Annotated[
        Engine,
        typer.Option(
            help="What answers for models no Ollama here provides: llama (the embedded LLM) or "
            "extractive (instant, exact, not a language model)."
        ),
    ] = Engine.LLAMA,
) -> None:
    """Run a task on this machine: the compiled graph, with Ollama or the embedded model server."""
    import json as _json

    from aistack.etl.storage import open_storage
    from aistack.inputs import check_own_input
    from aistack.pipelines.local import load_task, run_task
    from aistack.pipelines.runtime import DATASETS_DIR
    from aistack.uris import storage_uri

    try:
        out_uri = storage_uri(out_uri) if out_uri else None  # a plain path, as `aistack etl --out` takes
        task, agent_objs = load_task(task_file, agents)
        if task.spec.input is not None:
            check_own_input(task.spec.input.model_dump(by_alias=True, exclude_none=True), DATASETS_DIR)
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        steps = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(), console=console
        )
        with steps as bar:
            ids: dict[str, int] = {}

            def on_task(name: str, state: str) -> None:
                if state == "started":
                    ids[name] = bar.add_task(name, total=1)
                else:
                    bar.update(ids[name], completed=1)

            result = run_task(
                task,
                agent_objs,
                out_uri,
                workers,
                on_event=say,
                on_task=on_task,
                stand_in_engine=stand_in.value,
            )
        summary = _json.loads(open_storage(result.outputs).read_bytes("summary.json"))
    except Exception as exc:
        fail(exc)
        return
    table = summary_table(f"{task.metadata.name}: run {result.name}")
    table.add_row("documents / chunks", f"{summary['etl']['documents']:,} / {summary['etl']['chunks']:,}")
    for name, st in summary["stages"].items():
        table.add_row(
            f"stage {name}", f"{st['rows']:,} records, {st['cached']:,} cached, {st['errors']:,} errors"
        )
    table.add_row("tokens (prompt / eval)", f"{summary['prompt_tokens']:,} / {summary['eval_tokens']:,}")
    for model, served_by in sorted(result.models.items()):
        table.add_row(f"model {model}", served_by)
    table.add_row("time", f"{result.seconds:.1f} s")
    out.print(table)
    say(f"outputs: {result.outputs}", stderr=False)  # whole: a table cell would end it with "…"
    if task.spec.question:
        say(Text.assemble(("Q: ", "bold"), task.spec.question), stderr=False)
    for answer in summary["outputs"][:3]:
        say(Text.assemble(("A: ", "bold"), str(answer)), stderr=False)


@app.command("compile")
def compile_command(
    task_file: Annotated[Path | None, typer.Argument(help="A TaskOrchestration YAML file.")] = None,
    agents: Annotated[
        Path | None, typer.Option(help="OllamaAgents YAML (default: agents.yaml beside the task).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the YAML here (default: stdout).")
    ] = None,
    all_examples: Annotated[bool, typer.Option("--all", help="Regenerate argo/ from examples/.")] = False,
    check: Annotated[
        bool, typer.Option("--check", help="With --all: write nothing, fail if argo/ is stale.")
    ] = False,
    dot: Annotated[
        bool, typer.Option("--dot", help="Print the DAG as Graphviz DOT instead of YAML.")
    ] = False,
) -> None:
    """Compile a task to an Argo Workflow (or CronWorkflow) YAML, ready for kubectl create / argo submit."""
    from aistack.pipelines.compile import compile_task
    from aistack.pipelines.examples import regenerate_argo
    from aistack.pipelines.local import load_task

    try:
        if all_examples:
            stale = regenerate_argo(check=check)
            for path in stale:
                out.print(f"{'stale' if check else 'written'}: {path}")
            if check and stale:
                raise typer.Exit(1)
            if not stale:
                out.print("argo/ is up to date")
            return
        if task_file is None:
            raise ValueError("give a TASK file, or --all")
        task, agent_objs = load_task(task_file, agents)
        compiled = compile_task(task, agent_objs, name=task.metadata.name if dot else None)
        if dot:
            from aistack.pipelines.diagram import to_dot

            text = to_dot(compiled)
        else:
            text = compiled.to_yaml()
    except typer.Exit:
        raise
    except Exception as exc:
        fail(exc)
        return
    if output:
        output.write_text(text)
        say(f"wrote {output}")
    else:
        sys.stdout.write(text)


@app.command("submit")
def submit_command(
    task_file: Annotated[Path, typer.Argument(help="A TaskOrchestration YAML file.")],
    agents: Annotated[
        Path | None, typer.Option(help="OllamaAgents YAML (default: agents.yaml beside the task).")
    ] = None,
    namespace: Annotated[
        str | None, typer.Option("-n", "--namespace", help="Default: the kubeconfig context's.")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Workflow name (default: generated from the task's).")
    ] = None,
    kubeconfig: Annotated[str | None, typer.Option(help="Default: $KUBECONFIG or ~/.kube/config.")] = None,
) -> None:
    """Submit a task's Workflow (or CronWorkflow) to the cluster, or to the Argo Server if ARGO_SERVER is set."""
    from aistack.pipelines.compile import compile_task
    from aistack.pipelines.local import load_task
    from aistack.pipelines.submit import submit

    try:
        task, agent_objs = load_task(task_file, agents)
        created = submit(compile_task(task, agent_objs, name=name), namespace, kubeconfig)
    except Exception as exc:
        fail(exc)
        return
    meta = created.get("metadata", {})
    out.print(
        f"{created.get('kind', 'Workflow')} {meta.get('namespace')}/{meta.get('name')} "
        f"{created.get('aistackAction', 'created')}",
        highlight=False,
    )
    out.print(f"follow it with: argo watch -n {meta.get('namespace')} {meta.get('name')}", highlight=False)


app.add_typer(operator_app, name="operator")
app.command("gateway")(gateway_command)
app.command("doctor")(doctor_command)


def run() -> None:
    """The `aistack` program (console script and `python -m aistack`).

    A command that marks itself finished (everything written, flushed and closed: `aistack
    etl`) ends the process at once: tearing down numpy, pyarrow and a 100k-token encoding
    takes about 50 ms, a sixth of a small run's wall time, and every Argo step pays it.
    """
    state["finished"] = False
    try:
        app(prog_name="aistack")
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if state["finished"] and code in (0, None):
        logging.shutdown()
        try:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:  # None: started with that descriptor closed
                    stream.flush()
        except (OSError, ValueError):  # a pipe closed at the last moment: as Python exits then
            os._exit(120)
        os._exit(0)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
