"""The agent step: read records from a published dataset, run one stage, publish `results`."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from aistack.etl.parquet_io import DatasetWriter, iter_table
from aistack.etl.schemas import RESULTS
from aistack.steps.model_client import ModelClient, ResultCache, RetryPolicy, concurrency_for
from aistack.steps.roles import AgentConfig, is_no_answer
from aistack.steps.stages import InputRecord, ProgressFn, StageFailedError, StageOutcome, StageSpec, run_stage


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
    concurrency: int | None = None  # default: concurrency_for(the agent's numParallel)
    timeout: float = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    summary: dict[str, object] = field(default_factory=dict)


def run_agent_step(
    stage: StageSpec,
    records: list[InputRecord] | Iterator[InputRecord],
    out_uri: str,
    options: AgentStepOptions,
    progress: ProgressFn | None = None,
) -> StageOutcome:
    """Run `stage` and publish its rows at `out_uri`; raise StageFailedError past the budget."""

    async def go() -> tuple[StageOutcome, dict[str, int]]:
        cache = ResultCache(options.cache_uri) if options.cache_uri else None
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
            outcome = await run_stage(client_for, stage, records, progress)
        finally:
            for client in clients.values():
                await client.close()
        stats: Counter[str] = Counter()
        for client in clients.values():
            stats.update(client.stats)
        return outcome, dict(stats)

    outcome, stats = asyncio.run(go())
    dataset = DatasetWriter(out_uri)
    results = dataset.table("results", RESULTS)
    for row in outcome.rows:
        results.append(row, len(row["response"] or ""))
    dataset.publish({**options.summary, "stage": stage.name, **outcome.totals(), "client": stats})
    if outcome.over_budget(stage.error_budget_percent):
        raise StageFailedError(
            f"stage {stage.name!r}: {outcome.errors} of {outcome.attempted} records failed, over the "
            f"{stage.error_budget_percent}% error budget; results (with the errors) are at {out_uri}"
        )
    return outcome
