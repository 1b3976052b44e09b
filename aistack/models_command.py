"""`aistack models serve`: Ollama's REST API in front of aistack's embedded engines."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from aistack.console import fail, say

models_app = typer.Typer(help="Model servers.", no_args_is_help=True)


class Engine(StrEnum):
    LLAMA = "llama"
    EXTRACTIVE = "extractive"


@models_app.command("serve")
def models_serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (Ollama's is 11434).", min=0, max=65535)] = 11434,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Another model name to answer to (repeatable): a stand-in, said so."),
    ] = None,
    stand_in: Annotated[
        Engine,
        typer.Option(help="What answers for --model names: the embedded LLM, or the extractive engine."),
    ] = Engine.LLAMA,
    parallel: Annotated[
        int, typer.Option(help="Concurrent generations per engine.", envvar="OLLAMA_NUM_PARALLEL", min=1)
    ] = 1,
    max_queue: Annotated[
        int, typer.Option(help="Pending requests before 503.", envvar="OLLAMA_MAX_QUEUE", min=0)
    ] = 512,
    context_length: Annotated[
        int, typer.Option(help="Default num_ctx.", envvar="OLLAMA_CONTEXT_LENGTH", min=256)
    ] = 4096,
    keep_alive: Annotated[
        str, typer.Option(help="How long a model stays loaded after a request.", envvar="OLLAMA_KEEP_ALIVE")
    ] = "5m",
    max_loaded: Annotated[
        int,
        typer.Option(help="Runners (one per num_ctx) kept loaded.", envvar="OLLAMA_MAX_LOADED_MODELS", min=1),
    ] = 3,
    faults: Annotated[str, typer.Option(help="Test only: latency=S,error_rate=F,drop_rate=F,seed=N.")] = "",
) -> None:
    """Serve Ollama's API with aistack's embedded engines: SmolLM2-135M-Instruct on llama.cpp (as
    smollm2:135m) and the extractive engine (as aistack-extractive). Ollama's environment variables
    (OLLAMA_NUM_PARALLEL, OLLAMA_CONTEXT_LENGTH, OLLAMA_KEEP_ALIVE, ...) are honoured as Ollama does."""
    import asyncio

    from aistack.steps.model_server import EmbeddedModelServer, Faults

    try:
        server = EmbeddedModelServer(
            list(model or []),
            parallel,
            max_queue,
            context_length=context_length,
            faults=Faults.parse(faults),
            stand_in_engine=stand_in.value,
            keep_alive=keep_alive,
            max_loaded=max_loaded,
        )
        native = sorted(n for n, s in server.served.items() if not s.stand_in)
        say(f"embedded model server on http://{host}:{port}: {', '.join(native)}")
        for name, answered_by in sorted(server.stand_ins().items()):
            say(f"  {name}: a stand-in, answered by {answered_by}")
        asyncio.run(server.serve(host, port))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        fail(exc)
