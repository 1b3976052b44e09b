"""Gateway overhead: synchronous agent calls through `aistack gateway` (uvicorn, auth, limits,
role contract, ModelClient) against the same calls made directly with the official ollama client
to the same embedded model server, in this process. Distinct texts, so no result cache is hit.

Prints calls/s of both, and the ratio gateway/direct (1.0 = no overhead).

    python benchmarks/gateway_overhead.py [--calls 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import ollama
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import free_port  # noqa: E402

from aistack.gateway.server import build_app  # noqa: E402
from aistack.gateway.settings import GatewaySettings  # noqa: E402
from aistack.steps.model_server import EmbeddedModelServer  # noqa: E402
from aistack.steps.roles import StageSettings, role  # noqa: E402

TEXT = ("Tuples are immutable sequences. Lists are mutable sequences. A list comprehension consists of brackets "
        "containing an expression followed by a for clause. Case {i}.")  # fmt: skip


async def direct(host: str, calls: int, concurrency: int) -> float:
    client, slots = ollama.AsyncClient(host=host), asyncio.Semaphore(concurrency)
    summarizer = role("summarizer")

    async def one(i: int) -> None:
        async with slots:
            await client.chat(
                model="aistack-extractive", messages=summarizer.messages(TEXT.format(i=i), StageSettings())
            )

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    return calls / (time.perf_counter() - started)


async def through_gateway(url: str, token: str, calls: int, concurrency: int, offset: int) -> float:
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as http:

        async def one(i: int) -> None:
            async with slots:
                r = await http.post("/summarize", json={"text": TEXT.format(i=offset + i)})
                r.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        return calls / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    server = EmbeddedModelServer(models=["aistack-extractive"], parallel=args.concurrency)
    host = server.start()
    os.environ["OLLAMA_HOST"] = host
    token, tmp = "bench-token", Path(tempfile.mkdtemp())
    app, _ = build_app(GatewaySettings(token=token, agent_files=(ROOT / "examples/question-answering/agents.yaml",),
                                       state_dir=tmp / "state", out=(tmp / "out").as_uri(),
                                       client_concurrency=args.concurrency * 2))  # fmt: skip
    port = free_port()
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    while not web.started:
        time.sleep(0.02)
    try:
        asyncio.run(direct(host, 20, args.concurrency))  # warm up both paths
        asyncio.run(through_gateway(f"http://127.0.0.1:{port}", token, 20, args.concurrency, 10**6))
        base = asyncio.run(direct(host, args.calls, args.concurrency))
        gateway = asyncio.run(
            through_gateway(f"http://127.0.0.1:{port}", token, args.calls, args.concurrency, 0)
        )
    finally:
        web.should_exit = True
        thread.join(10)
        server.stop()
    print(f"direct ollama client:  {base:8.1f} calls/s")
    print(f"through the gateway:   {gateway:8.1f} calls/s")
    print(
        f"ratio gateway/direct:  {gateway / base:.2f}x  ({args.calls} calls, concurrency {args.concurrency})"
    )
    # client, gateway and model server share this process and its GIL: an upper bound on the cost
    print(f"added per call:        {1000 * (1 / gateway - 1 / base):.2f} ms")


if __name__ == "__main__":
    main()
