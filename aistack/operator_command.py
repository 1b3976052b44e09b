"""`aistack operator run`: the kopf operator against the current kubeconfig (in a pod: its service account)."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Annotated

import typer

operator_app = typer.Typer(help="The Kubernetes operator.", no_args_is_help=True)
log = logging.getLogger("aistack.operator")


@operator_app.command("run")
def operator_run(
    namespace: Annotated[
        list[str] | None, typer.Option("-n", "--namespace", help="Watch only these namespaces (repeatable).")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("-A", "--all-namespaces", help="Watch the whole cluster (the default).")
    ] = False,
    metrics_port: Annotated[int, typer.Option(help="Prometheus /metrics port (0: off).")] = 9090,
    health: Annotated[str, typer.Option(help="Liveness endpoint.")] = "http://0.0.0.0:8080/healthz",
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log at DEBUG.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Log warnings and errors only.")] = False,
) -> None:
    """Run the operator: cluster-wide unless -n is given; reconciles are logged at INFO."""
    import kopf

    from aistack.console import fail

    if namespace and all_namespaces:
        fail(ValueError("give -n NAMESPACE or -A, not both"))
    # kopf's own log set-up (what `kopf run` does): INFO by default, each object's lines prefixed
    kopf.configure(verbose=verbose, quiet=quiet, log_format=kopf.LogFormat.FULL, log_prefix=True)
    if not namespace and not all_namespaces:
        # kopf's convention: no scope given means cluster-wide, said once as a warning
        log.warning("no -n NAMESPACE or -A given: watching all namespaces (cluster-wide)")
    os.environ["AISTACK_METRICS_PORT"] = str(metrics_port)
    import aistack.operator.main  # noqa: F401  (registers the handlers)

    with contextlib.suppress(KeyboardInterrupt):
        kopf.run(
            standalone=True, clusterwide=not namespace, namespaces=namespace or [], liveness_endpoint=health
        )
