"""Agent throughput: a map stage through aistack's call path against the engine's own best rate.

--engine extractive (default): the embedded server is given P parallel slots and a fixed latency L
per call, so no client can exceed P/L calls per second; aistack's call path (official ollama
AsyncClient, retries, accounting, result rows) must reach >= 0.9 x P/L. Printed as a ratio.

--engine llama: the embedded LLM (SmolLM2-135M-Instruct on llama.cpp). The baseline is llama.cpp
itself: the same prompts (chunks of the bundled docs, the summarizer role's messages) sent straight
to an xllamacpp.Server with P slots from P threads, in this process, with the very request aistack's
server sends. aistack's rate (official client -> HTTP -> Ollama API -> the same engine) divided by
that must be >= 0.9. It also prints tokens per second, checks that aistack's token totals equal the
engine's usage counts, and the contract pass rates of the classifier and extractor roles.

    python benchmarks/agent_throughput.py [--records 2000] [--parallel 8] [--latency 0.05]
    python benchmarks/agent_throughput.py --engine llama [--records 16] [--parallel 1] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aistack.steps.model_client import ModelClient, concurrency_for
from aistack.steps.model_server import EmbeddedModelServer, Faults
from aistack.steps.roles import AgentConfig, StageSettings, role
from aistack.steps.stages import InputRecord, StageOutcome, StageSpec, run_stage

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2:135m"


async def run_map(url: str, stage: StageSpec, records: list[InputRecord]) -> tuple[float, StageOutcome, int]:
    client = ModelClient(url, concurrency=concurrency_for(stage.agent.num_parallel))
    try:
        await client.model_info(stage.agent.model)  # not part of the timed stage
        started = time.perf_counter()
        outcome = await run_stage(client, stage, records)
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    return elapsed, outcome, client.stats["calls"]


def extractive(args: argparse.Namespace) -> None:
    records = [
        InputRecord(f"r{i}", f"Record {i}. The pipeline sends every chunk to an agent. It writes Parquet.")
        for i in range(args.records)
    ]
    agent = AgentConfig("summarizer-agent", "aistack-extractive", "summarizer", num_parallel=args.parallel)
    stage = StageSpec("summaries", "map", agent, StageSettings())
    with EmbeddedModelServer(parallel=args.parallel, faults=Faults(latency=args.latency)) as server:
        elapsed, outcome, calls = asyncio.run(run_map(server.url, stage, records))
    assert outcome.errors == 0 and len(outcome.rows) == len(records)
    ideal = args.parallel / args.latency
    rate = calls / elapsed
    print(
        f"{calls} calls in {elapsed:.2f} s: {rate:.1f} calls/s; ideal P/L = {args.parallel}/{args.latency} = {ideal:.1f}"
    )
    print(f"ratio achieved / ideal: {rate / ideal:.2f}x (target >= 0.90x)")


def doc_chunks(count: int, max_tokens: int) -> list[InputRecord]:
    """Chunks of the bundled Python tutorial, as the ETL makes them."""
    from aistack.etl.chunking import ChunkingOptions
    from aistack.etl.job import EtlOptions, run_etl
    from aistack.etl.parquet_io import read_table

    out = Path(tempfile.mkdtemp(prefix="aistack-bench-")).as_uri()
    run_etl(
        str(ROOT / "datasets" / "python-docs" / "tutorial"), out, EtlOptions(ChunkingOptions(max_tokens, 0))
    )
    rows = read_table(out, "chunks").to_pylist()
    return [InputRecord(r["chunk_id"], r["text"]) for r in rows[:count]]


def direct_requests(agent: AgentConfig, records: list[InputRecord]) -> list[dict[str, Any]]:
    """The requests aistack's server sends llama.cpp for these records (Ollama's defaults + options)."""
    from aistack.steps.engine_api import GenerationRequest
    from aistack.steps.llama_engine import llama_request

    r = role(agent.role)
    return [
        llama_request(
            GenerationRequest(MODEL, r.messages(rec.text, StageSettings()), options=agent.options), 4096
        )
        for rec in records
    ]


def engine_baseline(requests: list[dict[str, Any]], parallel: int) -> tuple[float, list[dict[str, Any]]]:
    """llama.cpp's own rate: the requests straight to an xllamacpp.Server, `parallel` at a time."""
    import xllamacpp

    from aistack.steps.llama_engine import cpu_threads
    from aistack.steps.model_weights import gguf_path

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_path())
    params.n_ctx = 4096 * parallel
    params.n_parallel = parallel
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = cpu_threads()
    params.verbosity = -1
    engine = [xllamacpp.Server(params)]  # dropped at the end: only one engine runs at a time
    usage: list[dict[str, Any]] = []

    def call(request: dict[str, Any]) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def on_chunk(chunk: dict[str, Any]) -> bool:
            if chunk.get("usage"):
                last.update(chunk["usage"])
            return False

        engine[0].handle_chat_completions(request, on_chunk)
        return last

    call(requests[0])  # warm-up, not timed
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        usage = list(pool.map(call, requests))
    elapsed = time.perf_counter() - started
    engine.clear()
    return elapsed, usage


def contract_rates(url: str, records: list[InputRecord]) -> None:
    """First-try passes, passes after re-asks, and dead letters of the JSON roles on real output."""
    schema = {
        "type": "object",
        "properties": {"topic": {"type": "string", "maxLength": 80},
                       "keywords": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 5}},
        "required": ["topic", "keywords"],
    }  # fmt: skip
    stages = {
        "classifier": StageSpec(
            "kind", "map", AgentConfig("c", MODEL, "classifier", options={"temperature": 0}),
            StageSettings(labels=("data structures", "control flow", "modules and packages", "errors and exceptions",
                                  "input and output", "classes")),
            error_budget_percent=100,
        ),
        "extractor": StageSpec(
            "facts", "map", AgentConfig("x", MODEL, "extractor", options={"temperature": 0}),
            StageSettings(output_schema=schema), error_budget_percent=100,
        ),
    }  # fmt: skip
    for name, stage in stages.items():
        _, outcome, _ = asyncio.run(run_map(url, stage, records))
        first = sum(r["error"] is None and r["attempts"] == 1 for r in outcome.rows)
        later = sum(r["error"] is None and r["attempts"] > 1 for r in outcome.rows)
        dead = sum(r["error"] is not None for r in outcome.rows)
        n = len(outcome.rows)
        print(
            f"contract {name:10s}: first try {first}/{n}, after re-asks {first + later}/{n}, dead-lettered {dead}/{n}"
        )


def llama(args: argparse.Namespace) -> None:
    records = doc_chunks(args.records, args.chunk_tokens)
    options = {"temperature": 0, "seed": 1, "num_predict": args.num_predict}
    agent = AgentConfig("summarizer-agent", MODEL, "summarizer", options=options, num_parallel=args.parallel)
    stage = StageSpec("summaries", "map", agent, StageSettings())
    requests = direct_requests(agent, records)
    print(f"{len(records)} chunks of the bundled tutorial, <= {args.chunk_tokens} tokens, answers <= {args.num_predict} tokens, "
          f"{args.parallel} slot(s)")  # fmt: skip
    best_direct, best_aistack = float("inf"), float("inf")
    usage: list[dict[str, Any]] = []
    outcome: StageOutcome | None = None
    for round_ in range(args.rounds):  # alternate, best of each: the machine is noisy
        # one engine loaded at a time: an idle llama.cpp beside a busy one still costs CPU
        elapsed, usage = engine_baseline(requests, args.parallel)
        best_direct = min(best_direct, elapsed)
        with EmbeddedModelServer(parallel=args.parallel) as server:
            asyncio.run(run_map(server.url, stage, records[:1]))  # load the runner, not timed
            elapsed, outcome, _ = asyncio.run(run_map(server.url, stage, records))
        best_aistack = min(best_aistack, elapsed)
        print(f"round {round_ + 1}: engine {len(records) / best_direct:.2f} calls/s, "
              f"aistack {len(records) / elapsed:.2f} calls/s")  # fmt: skip
    assert outcome is not None and outcome.errors == 0
    rows = outcome.rows
    prompt = sum(r["prompt_tokens"] for r in rows)
    evals = sum(r["eval_tokens"] for r in rows)
    direct_prompt = sum(u["prompt_tokens"] for u in usage)
    direct_eval = sum(u["completion_tokens"] for u in usage)
    print(
        f"engine directly: {len(records) / best_direct:.2f} calls/s; through aistack: {len(records) / best_aistack:.2f} calls/s"
    )
    print(f"ratio aistack / engine: {best_direct / best_aistack:.2f}x (target >= 0.90x)")
    print(f"tokens: prompt {prompt:,} ({prompt / best_aistack:.0f}/s wall, "
          f"{prompt / (sum(r['prompt_eval_duration_ns'] for r in rows) / 1e9):.0f}/s in prompt eval), "
          f"eval {evals:,} ({evals / best_aistack:.0f}/s wall, "
          f"{evals / (sum(r['eval_duration_ns'] for r in rows) / 1e9):.0f}/s in generation)")  # fmt: skip
    same = "equal" if (prompt, evals) == (direct_prompt, direct_eval) else "DIFFERENT"
    print(
        f"token totals: aistack {prompt:,} + {evals:,}, engine usage {direct_prompt:,} + {direct_eval:,}: {same}"
    )
    with EmbeddedModelServer(parallel=args.parallel) as server:
        contract_rates(server.url, records[: args.contract_records])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["extractive", "llama"], default="extractive")
    parser.add_argument("--records", type=int, default=None, help="default: 2000 (extractive), 16 (llama)")
    parser.add_argument("--parallel", type=int, default=None, help="default: 8 (extractive), 1 (llama)")
    parser.add_argument("--latency", type=float, default=0.05, help="extractive: seconds per call")
    parser.add_argument("--rounds", type=int, default=2, help="llama: alternating timed rounds")
    parser.add_argument("--chunk-tokens", type=int, default=256, help="llama: chunk size")
    parser.add_argument("--num-predict", type=int, default=48, help="llama: answer length")
    parser.add_argument("--contract-records", type=int, default=16, help="llama: records per JSON role")
    args = parser.parse_args()
    if args.engine == "llama":
        args.records, args.parallel = args.records or 16, args.parallel or 1
        llama(args)
    else:
        args.records, args.parallel = args.records or 2000, args.parallel or 8
        extractive(args)


if __name__ == "__main__":
    main()
