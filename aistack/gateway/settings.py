"""How a gateway is configured (from `aistack gateway` options and the environment)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

TOKEN_ENV = "AISTACK_GATEWAY_TOKEN"


@dataclass(frozen=True)
class GatewaySettings:
    mode: Literal["local", "cluster"] = "local"
    namespace: str = "default"  # where tasks go when the caller names none
    # local mode
    token: str | None = field(default_factory=lambda: os.environ.get(TOKEN_ENV) or None)
    agent_files: tuple[Path, ...] = ()
    out: str | None = None  # where local runs write (default ./out/gateway)
    state_dir: Path = Path("out/gateway/state")  # task records, so a restart loses nothing
    workers: int = 1  # local tasks run one at a time by default: they share this machine
    # input allow-list (both modes): file:// input under these roots (none given: the bundled
    # datasets only), s3:// input from these buckets (none given: any the gateway can read)
    input_roots: tuple[Path, ...] = ()
    input_buckets: tuple[str, ...] = ()
    # cluster mode
    kubeconfig: str | None = None
    ollama_host: str | None = None  # for batch-mode agents, which have no server between batches
    # limits
    max_body_bytes: int = 1 << 20  # Kubernetes objects are capped at ~1.5 MB; tasks carry references
    client_concurrency: int = 8  # in-flight requests per caller
    request_timeout: float = 300.0  # an agent call (a cold model load can take minutes)
