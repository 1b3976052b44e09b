"""The `aistack` command line."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from aistack.console import console, fail, out, state
from aistack.etl_command import etl_command
from aistack.gateway.command import gateway_command

app = typer.Typer(
    name="aistack",
    help="Batch LLM pipelines: chunk and tokenize corpora, run Ollama agents, land Parquet; locally or on Argo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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

    failed = False
    for path in files:
        try:
            documents = load_file(path)
        except (OSError, ValueError) as exc:
            console.print(f"[red]{path}: {exc}[/]", highlight=False, soft_wrap=True)
            failed = True
            continue
        for doc in documents:
            kind = doc.get("kind", "?") if isinstance(doc, dict) else "?"
            name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc, dict) else "?"
            issues = validate_object(doc)
            if issues:
                failed = True
                for issue in issues:
                    out.print(f"[red]{path}: {kind}/{name}: {issue}[/]", highlight=False, soft_wrap=True)
            else:
                out.print(f"{path}: {kind}/{name}: valid", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


models_app = typer.Typer(help="Model servers.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("serve")
def models_serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (Ollama's is 11434).")] = 11434,
    model: Annotated[list[str] | None, typer.Option("--model", help="Extra model name to serve.")] = None,
    parallel: Annotated[int, typer.Option(help="Concurrent generations, like OLLAMA_NUM_PARALLEL.")] = 4,
    max_queue: Annotated[int, typer.Option(help="Pending requests before 503, like OLLAMA_MAX_QUEUE.")] = 512,
    faults: Annotated[str, typer.Option(help="Test only: latency=S,error_rate=F,drop_rate=F,seed=N.")] = "",
) -> None:
    """Serve Ollama's API with aistack's embedded extractive engine (no GPU, no weights)."""
    import asyncio

    from aistack.steps.model_server import EmbeddedModelServer, Faults

    try:
        server = EmbeddedModelServer(list(model or []), parallel, max_queue, faults=Faults.parse(faults))
        console.print(
            f"embedded model server (extractive engine) on http://{host}:{port}; models: {sorted(server.names)}"
        )
        asyncio.run(server.serve(host, port))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        fail(exc)


@app.command("run")
def run_command(
    task_file: Annotated[Path, typer.Argument(help="A TaskOrchestration YAML file.")],
    agents: Annotated[
        Path | None, typer.Option(help="OllamaAgents YAML (default: agents.yaml beside the task).")
    ] = None,
    out_uri: Annotated[
        str | None, typer.Option("--out", help="Outputs root (default: ./out/<task>); replaces outputTarget.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Parallel shards.")] = 4,
) -> None:
    """Run a task on this machine: the compiled graph, with Ollama or the embedded model server."""
    import json as _json

    from aistack.etl.storage import open_storage
    from aistack.pipelines.local import load_task, run_task

    try:
        task, agent_objs = load_task(task_file, agents)
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

            result = run_task(task, agent_objs, out_uri, workers, on_event=console.print, on_task=on_task)
        summary = _json.loads(open_storage(result.outputs).read_bytes("summary.json"))
    except Exception as exc:
        fail(exc)
        return
    from rich.table import Table

    table = Table(title=f"{task.metadata.name}: run {result.name}", show_header=False)
    table.add_row("documents / chunks", f"{summary['etl']['documents']:,} / {summary['etl']['chunks']:,}")
    for name, st in summary["stages"].items():
        table.add_row(
            f"stage {name}", f"{st['rows']:,} records, {st['cached']:,} cached, {st['errors']:,} errors"
        )
    table.add_row("tokens (prompt / eval)", f"{summary['prompt_tokens']:,} / {summary['eval_tokens']:,}")
    table.add_row("model server", f"{result.host}{' (embedded engine)' if result.embedded else ''}")
    table.add_row("time", f"{result.seconds:.1f} s")
    table.add_row("outputs", result.outputs)
    out.print(table)
    if task.spec.question:
        out.print(f"[bold]Q:[/] {task.spec.question}", highlight=False)
    for answer in summary["outputs"][:3]:
        out.print(f"[bold]A:[/] {answer}", highlight=False, soft_wrap=True)


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
        console.print(f"wrote {output}")
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
        f"{created.get('kind', 'Workflow')} {meta.get('namespace')}/{meta.get('name')} created",
        highlight=False,
    )
    out.print(f"follow it with: argo watch -n {meta.get('namespace')} {meta.get('name')}", highlight=False)


operator_app = typer.Typer(help="The Kubernetes operator.", no_args_is_help=True)
app.add_typer(operator_app, name="operator")


@operator_app.command("run")
def operator_run(
    namespace: Annotated[
        list[str] | None, typer.Option("-n", "--namespace", help="Watch these namespaces.")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("-A", "--all-namespaces", help="Watch the whole cluster.")
    ] = False,
    metrics_port: Annotated[int, typer.Option(help="Prometheus /metrics port (0: off).")] = 9090,
    health: Annotated[str, typer.Option(help="Liveness endpoint.")] = "http://0.0.0.0:8080/healthz",
) -> None:
    """Run the operator against the current kubeconfig (in a pod: its service account)."""
    import os

    import kopf

    if not namespace and not all_namespaces:
        fail(ValueError("give -n NAMESPACE (repeatable) or -A"))
    os.environ["AISTACK_METRICS_PORT"] = str(metrics_port)
    import aistack.operator.main  # noqa: F401  (registers the handlers)

    with contextlib.suppress(KeyboardInterrupt):
        kopf.run(
            standalone=True, clusterwide=all_namespaces, namespaces=namespace or [], liveness_endpoint=health
        )


app.command("gateway")(gateway_command)


def run() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    app()
