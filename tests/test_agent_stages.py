"""Stages through the official client against the embedded server: map, reduce, chat, and the
guarantees of the call path (retries without duplicates, cache, dead letters, error budget)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aistack.etl.parquet_io import read_manifest, read_table
from aistack.steps import extractive
from aistack.steps.agent_step import AgentStepOptions, check_error_budget, run_agent_step
from aistack.steps.model_client import ModelCallError, ModelClient, ResultCache, RetryPolicy
from aistack.steps.model_server import EmbeddedModelServer, Faults
from aistack.steps.roles import AgentConfig, StageSettings
from aistack.steps.stages import InputRecord, StageFailedError, StageSpec, run_stage

FACTS = [
    "Python was created by Guido van Rossum. It was first released in 1991.",
    "The Eiffel Tower is in Paris. It was completed in 1889.",
    "Water boils at 100 degrees Celsius at sea level. It freezes at 0 degrees.",
    "The Rhine flows through Switzerland, Germany and the Netherlands. It is long.",
]
QNA = AgentConfig("qna-agent", "llama3", "qna", num_parallel=4)
SUMMARIZER = AgentConfig("summarizer-agent", "llama3", "summarizer", num_parallel=4)


def records(n: int) -> list[InputRecord]:
    return [InputRecord(f"r{i:04d}", f"Record {i}. " + FACTS[i % len(FACTS)]) for i in range(n)]


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _stage(url: str, stage: StageSpec, recs: list[InputRecord], **client_kw: object):  # type: ignore[no-untyped-def]
    client = ModelClient(url, **client_kw)  # type: ignore[arg-type]
    try:
        return await run_stage(client, stage, recs), client.stats
    finally:
        await client.close()


def test_map_answers_each_record_once() -> None:
    stage = StageSpec("answer", "map", QNA, StageSettings(question="Who created Python?"))
    with EmbeddedModelServer(models=["llama3"], stand_in_engine="extractive") as server:
        outcome, _ = run(_stage(server.url, stage, records(8), concurrency=4))
    assert [r["input_ids"] for r in outcome.rows] == [[f"r{i:04d}"] for i in range(8)]
    answered = [r["response"] for r in outcome.rows if "Guido" in r["response"]]
    assert len(answered) == 2  # records 0 and 4 carry the fact; the rest say so
    assert all(r["response"] == extractive.REFUSAL for r in outcome.rows if "Guido" not in r["response"])
    assert all(
        r["prompt_tokens"] > 0 and r["eval_tokens"] > 0 and r["total_duration_ns"] > 0 for r in outcome.rows
    )
    assert outcome.errors == 0 and outcome.totals()["rows"] == 8


def test_reduce_combines_within_the_context_until_one_remains() -> None:
    agent = AgentConfig("summarizer-agent", "llama3", "summarizer", context_tokens=600)
    stage = StageSpec("summary", "reduce", agent)
    with EmbeddedModelServer(models=["llama3"], stand_in_engine="extractive") as server:
        outcome, _ = run(_stage(server.url, stage, records(40)))
    levels = sorted({r["level"] for r in outcome.rows})
    assert len(levels) >= 2, "40 records do not fit one 600-token call"
    assert [r["final"] for r in outcome.rows].count(True) == 1
    final = outcome.final[0]
    assert final["level"] == levels[-1] and final["response"]
    first_level = [r for r in outcome.rows if r["level"] == 1]
    assert sorted(i for r in first_level for i in r["input_ids"]) == [f"r{i:04d}" for i in range(40)]


def test_chat_takes_turns_and_the_judge_closes() -> None:
    judge = AgentConfig("judge-agent", "llama3", "judge")
    stage = StageSpec(
        "debate", "chat", AgentConfig("a", "llama3", "assistant"), StageSettings(question="When was Python released?"),
        participants=[AgentConfig("b", "aistack-extractive", "assistant")], judge=judge, rounds=2,
    )  # fmt: skip
    with EmbeddedModelServer(models=["llama3"], stand_in_engine="extractive") as server:
        outcome, _ = run(_stage(server.url, stage, records(4)))
    assert [r["agent"] for r in outcome.rows] == ["a", "b", "a", "b", "judge-agent"]
    assert [r["level"] for r in outcome.rows] == [1, 2, 3, 4, 5]
    assert outcome.final[0]["agent"] == "judge-agent" and outcome.final[0]["response"].startswith("Verdict:")
    assert len({r["response"] for r in outcome.rows[:4]}) == 4, "each turn adds a new point"


def test_retries_under_faults_give_exactly_one_result_per_record() -> None:
    faults = Faults(error_rate=0.25, drop_rate=0.1, slow_rate=0.05, slow_seconds=0.3, seed=7)
    stage = StageSpec("answer", "map", QNA, StageSettings(question="Who created Python?"))
    recs = records(60)
    with EmbeddedModelServer(
        models=["llama3"], stand_in_engine="extractive", parallel=4, faults=faults
    ) as server:
        outcome, stats = run(
            _stage(
                server.url,
                stage,
                recs,
                concurrency=4,
                timeout=0.2,
                retry=RetryPolicy(attempts=12, base_seconds=0.01, max_seconds=0.05),
            )
        )
        served = dict(server.stats)
    ids = [r["result_id"] for r in outcome.rows]
    assert len(ids) == len(set(ids)) == 60, "no duplicates, nothing lost"
    assert outcome.errors == 0
    assert served["busy"] + served["crash"] > 0 and served["dropped"] > 0, "faults were injected"
    assert sum(r["attempts"] for r in outcome.rows) == stats["requests"] > 60, "retries are recorded"
    assert stats["retries"] == stats["requests"] - 60


def test_unknown_model_is_a_clear_error_and_not_retried() -> None:
    with EmbeddedModelServer() as server:

        async def go() -> None:
            client = ModelClient(server.url)
            try:
                await client.chat("mistral", [{"role": "user", "content": "x"}])
            finally:
                await client.close()

        with pytest.raises(
            ModelCallError,
            match=rf"model 'mistral' at {server.url} failed: HTTP 404: model \"mistral\" not found",
        ):
            run(go())
        assert server.stats["requests"] == 1


def test_cache_second_run_makes_no_calls_and_invalidates_on_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = StageSpec("answer", "map", QNA, StageSettings(question="Who created Python?"))
    cache = ResultCache((tmp_path / "cache").as_uri())
    with EmbeddedModelServer(models=["llama3"], stand_in_engine="extractive") as server:
        first, _ = run(_stage(server.url, stage, records(12), cache=cache))
        calls = server.stats["generations"]
        assert calls == 12
        second, stats = run(_stage(server.url, stage, records(12), cache=cache))
        assert server.stats["generations"] == calls, "no model calls on unchanged input"
        assert stats["cache_hits"] == 12 and all(r["cached"] for r in second.rows)
        assert [r["response"] for r in second.rows] == [r["response"] for r in first.rows]
        changed = StageSpec(
            "answer", "map", QNA, StageSettings(question="Who created Python?", prompt="Answer briefly.")
        )
        run(_stage(server.url, changed, records(12), cache=cache))
        assert server.stats["generations"] == calls + 12, "a changed prompt calls again"
    monkeypatch.setattr(
        extractive, "ENGINE_VERSION", extractive.ENGINE_VERSION + "-next"
    )  # a new model digest
    with EmbeddedModelServer(models=["llama3"], stand_in_engine="extractive") as server:
        run(_stage(server.url, stage, records(12), cache=cache))
        assert server.stats["generations"] == 12, "a changed model digest calls again"


def test_identical_calls_in_flight_are_merged(tmp_path: Path) -> None:
    stage = StageSpec("answer", "map", QNA, StageSettings(question="Who?"))
    same = [InputRecord(f"dup{i}", FACTS[0]) for i in range(6)]
    with EmbeddedModelServer(
        models=["llama3"], stand_in_engine="extractive", faults=Faults(latency=0.05)
    ) as server:
        outcome, stats = run(
            _stage(server.url, stage, same, cache=ResultCache(tmp_path.as_uri()), concurrency=6)
        )
        assert server.stats["generations"] == 1 and stats["merged"] == 5
    assert len(outcome.rows) == 6 and len({r["response"] for r in outcome.rows}) == 1


def test_contract_violations_are_retried_then_dead_lettered() -> None:
    schema = {
        "type": "object",
        "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
        "required": ["zip"],
    }
    stage = StageSpec(
        "extract",
        "map",
        AgentConfig("x", "llama3", "extractor"),
        StageSettings(output_schema=schema),
        contract_retries=2,
        error_budget_percent=100,
    )
    with EmbeddedModelServer(models=["llama3"], stand_in_engine="extractive") as server:
        outcome, _ = run(_stage(server.url, stage, records(2)))
        assert server.stats["generations"] == 6, "each record asked 3 times"
    assert all(
        r["response"] is None and "output contract violated after 3 tries" in r["error"] for r in outcome.rows
    )
    assert all("zip" in r["error"] for r in outcome.rows)


def test_error_budget_counts_every_shard_and_names_the_cause(tmp_path: Path) -> None:
    """Each shard publishes all its rows, failed ones included; the budget is checked over every
    shard of the stage, and the message gives the overall counts and the commonest cause."""
    stage = StageSpec("answer", "map", QNA, StageSettings(question="Who?"), error_budget_percent=5)
    shards = [(tmp_path / f"shard-{i}").as_uri() for i in range(2)]
    with EmbeddedModelServer(
        models=["llama3"], stand_in_engine="extractive", faults=Faults(error_rate=0.5, seed=1)
    ) as server:
        for i, uri in enumerate(shards):
            options = AgentStepOptions(
                host=server.url, retry=RetryPolicy(attempts=1), label=f"shard {i + 1} of 2"
            )
            with pytest.raises(StageFailedError) as shard_failed:  # each shard fails, after publishing
                run_agent_step(stage, records(20)[i::2], uri, options)
            assert f"stage 'answer' (shard {i + 1} of 2): " in str(shard_failed.value)
            assert "records failed" in str(shard_failed.value) and "HTTP 50" in str(shard_failed.value)
    tables = [read_table(uri, "results").to_pylist() for uri in shards]
    assert [len(t) for t in tables] == [10, 10], "every record has a row, failed ones included"
    failed = [r for t in tables for r in t if r["error"]]
    assert failed and all("HTTP 50" in r["error"] and r["response"] is None for r in failed)
    summaries = [read_manifest(uri)["summary"] for uri in shards]
    assert sum(s["errors"] for s in summaries) == len(failed)
    with pytest.raises(StageFailedError) as err:
        check_error_budget("answer", 5, summaries, str(tmp_path))
    message = str(err.value)
    assert f"stage 'answer': {len(failed)} of 20 records failed" in message
    assert "over the 5% error budget; most common: " in message and "HTTP 50" in message
    check_error_budget("answer", 100, summaries, str(tmp_path))  # within a 100% budget: no error
