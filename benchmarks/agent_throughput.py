"""Agent throughput: a map stage over the embedded server against its ideal rate.

The embedded server is given P parallel slots and a fixed latency L per call, so no client
can exceed P/L calls per second; aistack's call path (official ollama AsyncClient, retries,
accounting, result rows) must reach >= 0.9 x P/L over 2,000 records. Printed as a ratio.

    python benchmarks/agent_throughput.py [--records 2000] [--parallel 8] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aistack.steps.model_client import ModelClient, concurrency_for
from aistack.steps.model_server import EmbeddedModelServer, Faults
from aistack.steps.roles import AgentConfig, StageSettings
from aistack.steps.stages import InputRecord, StageSpec, run_stage


async def run_map(url: str, records: list[InputRecord], parallel: int) -> tuple[float, int]:
    agent = AgentConfig("summarizer-agent", "aistack-extractive", "summarizer", num_parallel=parallel)
    stage = StageSpec("summaries", "map", agent, StageSettings())
    client = ModelClient(url, concurrency=concurrency_for(parallel))
    try:
        await client.model_info(agent.model)  # not part of the timed stage
        started = time.perf_counter()
        outcome = await run_stage(client, stage, records)
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    assert outcome.errors == 0 and len(outcome.rows) == len(records)
    return elapsed, client.stats["calls"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    records = [
        InputRecord(f"r{i}", f"Record {i}. The pipeline sends every chunk to an agent. It writes Parquet.")
        for i in range(args.records)
    ]
    with EmbeddedModelServer(parallel=args.parallel, faults=Faults(latency=args.latency)) as server:
        elapsed, calls = asyncio.run(run_map(server.url, records, args.parallel))
    ideal = args.parallel / args.latency
    rate = calls / elapsed
    print(
        f"{calls} calls in {elapsed:.2f} s: {rate:.1f} calls/s; ideal P/L = {args.parallel}/{args.latency} = {ideal:.1f}"
    )
    print(f"ratio achieved / ideal: {rate / ideal:.2f}x (target >= 0.90x)")


if __name__ == "__main__":
    main()
