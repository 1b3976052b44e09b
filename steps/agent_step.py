"""The agent step: read records from a published dataset, run one stage, publish `results`."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aistack.etl.parquet_io import iter_table
from aistack.steps.agent_calls import ProgressFn
from aistack.steps.model_client import ModelClient, RetryPolicy, concurrency_for
from aistack.steps.result_cache import ResultCache
from aistack.steps.result_parts import ResultParts
from aistack.steps.roles import AgentConfig, is_no_answer
from aistack.steps.stages import InputRecord, StageFailedError, StageOutcome, StageSpec, run_stage


def read_records(uri: str, table: str) -> Iterator[InputRecord]:
    """Chunks (`chunk_id`, `text`) or the final, successful rows of a previous stage's results."""
    if table == "chunks":
        for batch in iter_table(uri, "chunks", ["chunk_id", "text"]):
            for cid, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
                yield InputRecord(cid, text)
    elif table == "results":
        columns = ["result_id", "response", "final", "error", "role"]
        for batch in iter_table(uri, "results", columns):
            rows = zip(*(batch.column(i).to_pylist() for i in range(len(columns))), strict=True)
            for rid, response, final, error, role_name in rows:
                # a Q&A agent's "no answer" carries nothing for the next stage
                if final and error is None and not (role_name == "qna" and is_no_answer(response)):
                    yield InputRecord(rid, response)
    else:
        raise ValueError(f"cannot read records from table {table!r}: use chunks or results")


@dataclass
class AgentStepOptions:
    host: str  # the model server of agents not in `agent_hosts`
    agent_hosts: dict[str, str] = field(default_factory=dict)  # agent name -> its model server
    cache_uri: str | None = None
    refresh: bool = False  # the cache policy Refresh: answers are recomputed (and stored)
    concurrency: int | None = None  # default: concurrency_for(the agent's numParallel)
    timeout: float = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    summary: dict[str, object] = field(default_factory=dict)
    label: str = ""  # which share of the stage this step runs, for messages (e.g. "shard 3 of 8")


def run_agent_step(
    stage: StageSpec,
    records: Iterable[InputRecord],
    out_uri: str,
    options: AgentStepOptions,
    progress: ProgressFn | None = None,
) -> StageOutcome:
    """Run `stage`, writing its rows at `out_uri` part by part as they come (a restarted step skips
    the parts it wrote), then the manifest with the step's totals. Whether the errors are within
    the stage's budget is for the stage's readers to check, over all its shards (check_error_budget)."""

    async def go() -> tuple[StageOutcome, dict[str, int]]:
        cache = ResultCache(options.cache_uri, refresh=options.refresh) if options.cache_uri else None
        clients: dict[str, ModelClient] = {}

        def client_for(agent: AgentConfig) -> ModelClient:
            host = options.agent_hosts.get(agent.name, options.host)
            if host not in clients:
                clients[host] = ModelClient(
                    host,
                    concurrency=options.concurrency or concurrency_for(stage.agent.num_parallel),
                    timeout=options.timeout,
                    retry=options.retry,
                    cache=cache,
                )
            return clients[host]

        try:
            outcome = await run_stage(client_for, stage, records, progress, sink=sink)
        finally:
            for client in clients.values():
                await client.close()
        stats: Counter[str] = Counter()
        for client in clients.values():
            stats.update(client.stats)
        if cache is not None:
            stats.update({f"cache_{k}": v for k, v in cache.stats.items()})
        return outcome, dict(stats)

    sink = ResultParts(out_uri)
    outcome, stats = asyncio.run(go())
    summary = {**options.summary, "stage": stage.name, "budget_percent": stage.error_budget_percent}
    totals = {**summary, **outcome.totals(), "client": stats}
    sink.publish(totals, rows=outcome.attempted)
    # past the budget, the step fails after publishing every row; a retry redoes the parts with
    # errors (a model server that was down may be back) and takes the good answers from the cache
    label = f"{stage.name!r}{f' ({options.label})' if options.label else ''}"
    if (message := over_budget_message(label, stage.error_budget_percent, [totals], out_uri)) is not None:
        raise StageFailedError(message)
    return outcome


class UpstreamBudgetError(StageFailedError, ValueError):
    """A stage read results past their stage's error budget: no retry of the reader can fix that."""


def over_budget_message(
    stage: str, percent: float, summaries: list[dict[str, Any]], where: str
) -> str | None:
    """Why the stage is past its error budget, counted over the given summaries (its shards), with
    the commonest causes; None when it is within."""
    rows = sum(int(s.get("rows", 0)) for s in summaries)
    errors = sum(int(s.get("errors", 0)) for s in summaries)
    if errors * 100 <= percent * max(1, rows):
        return None
    causes: Counter[str] = Counter()
    for s in summaries:
        for top in s.get("top_errors", []):
            causes[top["error"]] += int(top["count"])
    common = "; ".join(f"{n}x {e}" for e, n in causes.most_common(2))
    return (
        f"stage {stage}: {errors} of {rows} records failed ({100 * errors / max(1, rows):.0f}%), over the "
        f"{percent:g}% error budget; most common: {common}; the results, errors included, are at {where}"
    )


def check_error_budget(stage: str, percent: float, summaries: list[dict[str, Any]], where: str) -> None:
    """For a stage's readers: its results over all its shards must be within its error budget."""
    if (message := over_budget_message(repr(stage), percent, summaries, where)) is not None:
        raise UpstreamBudgetError(message)
