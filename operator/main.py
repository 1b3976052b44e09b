"""The operator process: `aistack operator run` (or `kopf run -m aistack.operator.main`)."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf
from prometheus_client import start_http_server

from aistack.operator import handlers  # noqa: F401  (registers the handlers)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    # Events: the handlers' own (AgentsNotReady, WorkflowCreated, Succeeded, Failed, ...) and kopf's
    # per-object log lines (a handler that failed and will retry, with the error). Timers log
    # locally only, so following a run posts nothing until its phase changes.
    settings.posting.enabled = True
    settings.posting.loggers = True
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "aistack-operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="ai.stack")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="ai.stack")
    settings.watching.server_timeout = int(os.environ.get("AISTACK_WATCH_TIMEOUT", "300"))
    port = int(os.environ.get("AISTACK_METRICS_PORT", "0"))
    if port:
        start_http_server(port)
        logger.info(f"metrics on :{port}/metrics")
