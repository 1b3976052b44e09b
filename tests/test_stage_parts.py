"""Bounded, resumable stage steps: rows go out a part at a time, a restarted step skips the parts
it wrote (no duplicates, no repeated model calls), and a cached re-run reads one cache segment per
part instead of asking storage twice per record."""

from __future__ import annotations

from pathlib import Path

import pytest

from aistack.etl.parquet_io import read_manifest, read_table
from aistack.steps.agent_step import AgentStepOptions, run_agent_step
from aistack.steps.model_server import EmbeddedModelServer
from aistack.steps.roles import AgentConfig, StageSettings
from aistack.steps.stages import InputRecord, StageSpec

QNA = AgentConfig("qna-agent", "aistack-extractive", "qna", num_parallel=4)
SUMMARIZER = AgentConfig(
    "summarizer-agent", "aistack-extractive", "summarizer", num_parallel=4, context_tokens=600
)
PART_ROWS = 64  # small parts here (2048 in production): the same logic, a fast test
RECORDS = 2 * PART_ROWS + 30


@pytest.fixture(autouse=True)
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("aistack.steps.stages.PART_ROWS", PART_ROWS)


def records(n: int) -> list[InputRecord]:
    return [
        InputRecord(f"r{i:05d}", f"Record {i}. Python was created by Guido van Rossum.") for i in range(n)
    ]


class Killed(Exception):
    """The pod dies here."""


def test_a_map_step_killed_part_way_resumes_without_redoing_or_duplicating(tmp_path: Path) -> None:
    stage = StageSpec("answer", "map", QNA, StageSettings(question="Who created Python?"))
    out = (tmp_path / "shard-0").as_uri()
    seen = 0

    def die_after_a_part_and_a_half(n: int) -> None:
        nonlocal seen
        seen += n
        if seen == PART_ROWS + PART_ROWS // 2:
            raise Killed

    with EmbeddedModelServer() as server:
        options = AgentStepOptions(host=server.url)
        with pytest.raises(Killed):
            run_agent_step(stage, records(RECORDS), out, options, progress=die_after_a_part_and_a_half)
        with pytest.raises(Exception, match="missing"):
            read_manifest(out)  # nothing is visible before the step finishes
        finished = tmp_path / "shard-0" / "results" / "map" / "part-00000.parquet"
        written = finished.read_bytes()
        first = server.stats["generations"]
        outcome = run_agent_step(stage, records(RECORDS), out, options)
        again = server.stats["generations"] - first
    assert finished.read_bytes() == written, "the finished part was kept as it was"
    # the unfinished parts are asked again, not the finished one (calls in flight at the kill may
    # still reach the server after it: at most the client's window of them)
    assert RECORDS - PART_ROWS <= again <= RECORDS - PART_ROWS + 4 * (QNA.num_parallel + 1), again
    rows = read_table(out, "results").to_pylist()
    ids = [r["input_ids"][0] for r in rows]
    assert ids == [f"r{i:05d}" for i in range(RECORDS)], "every record once, in order"
    assert outcome.attempted == RECORDS and read_manifest(out)["tables"]["results"]["rows"] == RECORDS
    assert read_manifest(out)["summary"]["rows"] == RECORDS


def test_a_cached_rerun_reads_one_segment_per_part(tmp_path: Path) -> None:
    stage = StageSpec(
        "answer", "map", QNA, StageSettings(question="Who created Python?"), cache_scope="answer/shard-0-of-1"
    )
    cache = (tmp_path / "cache").as_uri()
    with EmbeddedModelServer() as server:
        options = AgentStepOptions(host=server.url, cache_uri=cache)
        run_agent_step(stage, records(RECORDS), (tmp_path / "run-1").as_uri(), options)
        calls = server.stats["generations"]
        run_agent_step(stage, records(RECORDS), (tmp_path / "run-2").as_uri(), options)
        assert server.stats["generations"] == calls, "no model calls on unchanged input"
    stats = read_manifest((tmp_path / "run-2").as_uri())["summary"]["client"]
    parts = -(-RECORDS // PART_ROWS)
    assert stats["cache_hits"] == RECORDS
    assert stats["cache_reads"] == parts and stats["cache_lists"] == 1 and stats.get("cache_writes", 0) == 0
    # one listing, then one read per part: with 2048-record parts, under 1 request per 1,000 records
    assert stats["cache_reads"] + stats["cache_lists"] == parts + 1
    refresh = AgentStepOptions(host=server.url, cache_uri=cache, refresh=True)
    with EmbeddedModelServer() as server:
        refresh.host = server.url
        run_agent_step(stage, records(10), (tmp_path / "run-3").as_uri(), refresh)
        assert server.stats["generations"] == 10, "Refresh asks the model again"


def test_a_reduce_spills_each_level_and_marks_one_final_row(tmp_path: Path) -> None:
    stage = StageSpec("summary", "reduce", SUMMARIZER)
    out = (tmp_path / "reduce").as_uri()
    with EmbeddedModelServer() as server:
        outcome = run_agent_step(stage, records(300), out, AgentStepOptions(host=server.url))
    rows = read_table(out, "results").to_pylist()
    levels = [r["level"] for r in rows]
    assert levels == sorted(levels) and levels[-1] >= 2, "levels written in order"
    assert [r["final"] for r in rows].count(True) == 1 and rows[-1]["final"]
    level_one = [i for r in rows if r["level"] == 1 for i in r["input_ids"]]
    assert level_one == [f"r{i:05d}" for i in range(300)]
    assert outcome.attempted == len(rows)


def test_a_retry_redoes_the_parts_with_errors_and_recovers(tmp_path: Path) -> None:
    """A model server failing every call on the first attempt: every row an error, the step fails past
    its budget.
    Retried with the server back, it redoes those parts (nothing is skipped as done) and succeeds."""
    stage = StageSpec("answer", "map", QNA, StageSettings(question="Who created Python?"))
    out = (tmp_path / "shard-0").as_uri()
    from aistack.steps.model_client import RetryPolicy
    from aistack.steps.model_server import Faults
    from aistack.steps.stages import StageFailedError

    with EmbeddedModelServer(faults=Faults(error_rate=1.0)) as failing:  # answers /api/tags, fails every call
        down = AgentStepOptions(host=failing.url, retry=RetryPolicy(attempts=1))
        with pytest.raises(StageFailedError, match=r"158 of 158 records failed .* most common: .*HTTP 50"):
            run_agent_step(stage, records(RECORDS), out, down)
    with EmbeddedModelServer() as server:
        outcome = run_agent_step(stage, records(RECORDS), out, AgentStepOptions(host=server.url))
        assert server.stats["generations"] == RECORDS, "every part was done again"
    assert outcome.errors == 0 and read_manifest(out)["summary"]["errors"] == 0


def test_a_segment_keeps_only_the_answers_its_part_uses(tmp_path: Path) -> None:
    """Entries no run asks for fall away when a part writes its segment: it does not grow with history."""
    import pyarrow.parquet as pq

    stage = StageSpec("answer", "map", QNA, StageSettings(question="Who?"), cache_scope="answer/shard-0-of-1")
    cache = tmp_path / "cache"
    with EmbeddedModelServer() as server:
        options = AgentStepOptions(host=server.url, cache_uri=cache.as_uri())
        run_agent_step(stage, records(10), (tmp_path / "a").as_uri(), options)
        changed = [InputRecord(r.id, r.text + " Changed.") for r in records(10)]
        run_agent_step(stage, changed[:5] + records(10)[5:], (tmp_path / "b").as_uri(), options)
    (segment,) = (cache / "v2" / "answer" / "shard-0-of-1" / "map" / "000000").iterdir()
    assert pq.read_table(segment).num_rows == 10, "5 reused + 5 new; the 5 replaced answers are gone"
