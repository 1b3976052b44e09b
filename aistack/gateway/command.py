"""`aistack gateway`: the command that starts the gateway (registered by aistack.cli). The web
stack is imported only when the command runs, so other commands start fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aistack.console import fail, say


def gateway_command(
    mode: Annotated[
        str, typer.Option(help="local: run tasks here; cluster: create TaskOrchestration CRs.")
    ] = "local",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    namespace: Annotated[
        str, typer.Option("-n", "--namespace", help="Default namespace of tasks and agents.")
    ] = "default",
    agents: Annotated[
        list[Path] | None, typer.Option("--agents", help="Local mode: OllamaAgent YAML (repeatable).")
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(help="Local mode: where runs write (a path, file:// or s3://; default ./out/gateway)."),
    ] = None,
    state_dir: Annotated[Path, typer.Option(help="Local mode: task records (kept across restarts).")] = Path(
        "out/gateway/state"
    ),
    kubeconfig: Annotated[
        str | None, typer.Option(help="Cluster mode: kubeconfig (default: in-cluster, then ~/.kube/config).")
    ] = None,
    ollama_host: Annotated[
        str | None, typer.Option(help="Cluster mode: Ollama for batch-mode agents' endpoints.")
    ] = None,
    input_root: Annotated[
        list[Path] | None,
        typer.Option(
            "--input-root",
            help="A directory tasks may read file:// input from (repeatable; default: the bundled datasets only).",
        ),
    ] = None,
    input_bucket: Annotated[
        list[str] | None,
        typer.Option(
            "--input-bucket", help="An S3 bucket tasks may read input from (repeatable; default: any)."
        ),
    ] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 1 << 20,
    client_concurrency: Annotated[int, typer.Option(help="Requests in flight per caller before 429.")] = 8,
    request_timeout: Annotated[float, typer.Option(help="Seconds an agent call may take.")] = 300.0,
) -> None:
    """Serve the HTTP API: POST/GET/DELETE /v1/tasks, agent endpoints, /metrics, /healthz; OpenAPI at /docs.
    Local mode takes its bearer token from $AISTACK_GATEWAY_TOKEN; cluster mode checks callers'
    Kubernetes tokens (TokenReview) and their RBAC (SubjectAccessReview)."""
    import uvicorn

    from aistack.gateway.server import build_app
    from aistack.gateway.settings import GatewaySettings

    if mode not in ("local", "cluster"):
        fail(ValueError(f"--mode must be local or cluster, not {mode!r}"))
    try:
        settings = GatewaySettings(
            mode=mode,  # type: ignore[arg-type]
            namespace=namespace, agent_files=tuple(agents or ()), out=out, state_dir=state_dir,
            input_roots=tuple(input_root or ()), input_buckets=tuple(input_bucket or ()),
            kubeconfig=kubeconfig, ollama_host=ollama_host, max_body_bytes=max_body_bytes,
            client_concurrency=client_concurrency, request_timeout=request_timeout,
        )  # fmt: skip
        api, description = build_app(settings)
    except Exception as exc:
        fail(exc)
    say(f"aistack gateway on http://{host}:{port} ({description}); OpenAPI at /docs")
    uvicorn.run(api, host=host, port=port, log_level="info", proxy_headers=True)
