"""Stage modes: map (one call per record), reduce (token-budgeted hierarchical combine) and chat
(agents take turns over a shared transcript, optionally closed by a judge).

A stage turns input records into `results` rows (etl.schemas.RESULTS). One record that fails
becomes an error row (a dead letter) and the stage goes on. Input streams in, and work goes in
parts of PART_ROWS items: each part's answers come from (and go to) one result-cache segment,
and its rows go to a `ResultParts` sink as soon as the part is done, so memory holds one part
whatever the input's size, and a restarted step skips the parts it already wrote. Without a sink
(tests, the gateway) the rows stay in `StageOutcome.rows`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aistack.etl.encodings import load_encoding
from aistack.etl.schemas import content_hash
from aistack.steps.agent_calls import (
    ClientFor,
    InputRecord,
    ProgressFn,
    StageSpec,
    call_agent,
    client_resolver,
    context_tokens,
    result_row,
)
from aistack.steps.model_client import ModelClient
from aistack.steps.result_parts import PART_ROWS, PartTotals, ResultParts
from aistack.steps.roles import role

__all__ = [
    "ConvergenceError",
    "InputRecord",
    "StageFailedError",
    "StageOutcome",
    "StageSpec",
    "call_agent",
    "run_stage",
]
T = TypeVar("T")
TOP_ERRORS = 3  # distinct error messages a stage's summary keeps, most frequent first
# a reduce's part holds its groups' texts (each up to a context window): fewer of them per part
REDUCE_PART_GROUPS = 128
DISTINCT_ERRORS = 256  # distinct messages counted at most; later new ones count as "other errors"


class StageFailedError(Exception):
    """More records failed than the stage's error budget allows."""


class ConvergenceError(StageFailedError, ValueError):
    """A reduce whose answers each fill a call alone: another level would not combine anything."""


@dataclass
class StageOutcome:
    """What a stage did: running totals (always) and the rows themselves (only without a sink)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    totals_so_far: PartTotals = field(default_factory=PartTotals)
    error_messages: Counter[str] = field(default_factory=Counter)

    @property
    def attempted(self) -> int:
        return self.totals_so_far.rows

    @property
    def errors(self) -> int:
        return self.totals_so_far.errors

    @property
    def final(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["final"] and r["error"] is None]

    def count(self, rows: list[dict[str, Any]]) -> None:
        t = self.totals_so_far
        for r in rows:
            t.rows += 1
            t.cached += r["cached"]
            t.prompt_tokens += r["prompt_tokens"]
            t.eval_tokens += r["eval_tokens"]
            t.call_ns += 0 if r["cached"] else r["total_duration_ns"]
            if r["error"] is not None:
                t.errors += 1
                message = r["error"][:300]
                if message not in self.error_messages and len(self.error_messages) >= DISTINCT_ERRORS:
                    message = "other errors"  # bounded: a message per record must not grow with the input
                self.error_messages[message] += 1

    def count_done(self, done: PartTotals) -> None:
        t = self.totals_so_far
        for name in ("rows", "errors", "cached", "prompt_tokens", "eval_tokens", "call_ns"):
            setattr(t, name, getattr(t, name) + getattr(done, name))

    def totals(self) -> dict[str, Any]:
        t = self.totals_so_far
        return {
            "rows": t.rows,
            "errors": t.errors,
            "cached": t.cached,
            "prompt_tokens": t.prompt_tokens,
            "eval_tokens": t.eval_tokens,
            "call_ns": t.call_ns,  # model time of the calls made in this run (cached rows cost none)
            "top_errors": [{"count": n, "error": e} for e, n in self.error_messages.most_common(TOP_ERRORS)],
        }


def _parts(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while part := list(itertools.islice(iterator, size)):
        yield part


async def _run_in_parts(
    items: Iterable[T],
    call: Callable[[T], Awaitable[dict[str, Any]]],
    *,
    group: str,
    client: ModelClient,
    stage: StageSpec,
    outcome: StageOutcome,
    sink: ResultParts | None,
    progress: ProgressFn | None,
    part_size: int | None = None,
) -> list[dict[str, Any]]:
    """Run `call` on every item, a part at a time (PART_ROWS items unless `part_size`), at most the client's concurrency (times 4, to
    keep the server's queue full) in flight; returns the rows of the last part (for a reduce's
    final row). Parts a previous attempt wrote are skipped."""
    done = sink.done(group) if sink is not None else {}
    last: list[dict[str, Any]] = []
    window = asyncio.Semaphore(max(1, client.concurrency) * 4)  # bounds memory, not the server

    async def one(item: T) -> dict[str, Any]:
        async with window:
            try:
                return await call(item)
            finally:
                if progress:
                    progress(1)

    for index, part in enumerate(_parts(items, part_size or PART_ROWS)):
        if index in done:
            outcome.count_done(done[index])
            last = []
            if progress:
                progress(len(part))
            continue

        async with client.segment(f"{stage.cache_prefix}/{group}", index):
            rows = list(await asyncio.gather(*(one(item) for item in part)))
        outcome.count(rows)
        if sink is not None:
            sink.write(group, index, rows)
        else:
            outcome.rows += rows
        last = rows
    return last


async def run_map(
    clients: ModelClient | ClientFor,
    stage: StageSpec,
    records: Iterable[InputRecord],
    progress: ProgressFn | None = None,
    sink: ResultParts | None = None,
) -> StageOutcome:
    """One call per record, rows in input order."""
    client = client_resolver(clients)(stage.agent)
    info = await client.model_info(stage.agent.model)
    outcome = StageOutcome()

    async def one(record: InputRecord) -> dict[str, Any]:
        result, error, attempts = await call_agent(
            client, stage.agent, stage.settings, record.text, None, stage.contract_retries
        )
        rid = content_hash("map", stage.name, record.id)
        return result_row(stage, stage.agent, rid, [record.id], 0, info, result, error, attempts, True)

    await _run_in_parts(
        records, one, group="map", client=client, stage=stage, outcome=outcome, sink=sink, progress=progress
    )
    return outcome


def _counting(records: Iterable[InputRecord], counted: dict[str, int]) -> Iterator[InputRecord]:
    for rec in records:
        counted["in"] += 1
        yield rec


def _groups(records: Iterable[InputRecord], budget: int) -> Iterator[list[InputRecord]]:
    """Consecutive records whose joined text fits `budget` tokens (a record alone may not)."""
    enc = load_encoding()
    current: list[InputRecord] = []
    used = 0
    for rec in records:
        tokens = len(enc.encode_ordinary(rec.text)) + 2
        if current and used + tokens > budget:
            yield current
            current, used = [], 0
        current.append(rec)
        used += tokens
    if current:
        yield current


async def run_reduce(
    clients: ModelClient | ClientFor,
    stage: StageSpec,
    records: Iterable[InputRecord],
    progress: ProgressFn | None = None,
    sink: ResultParts | None = None,
) -> StageOutcome:
    """Combine records level by level, each call within the model's context, until one remains.
    Each level streams from the one before: its rows are spilled (to the sink, or kept), then read
    back as the next level's input, so memory holds one group and one part."""
    client = client_resolver(clients)(stage.agent)
    info = await client.model_info(stage.agent.model)
    r = role(stage.agent.role)
    budget = max(64, context_tokens(stage.agent, info) - r.overhead_tokens(stage.settings) - r.answer_tokens)
    outcome = StageOutcome()
    current: Iterable[InputRecord] = records
    level = 0
    while True:
        level += 1
        group = f"level-{level}"
        counted = {"in": 0}

        async def combine(items: list[InputRecord], level: int = level) -> dict[str, Any]:
            text = "\n\n".join(g.text for g in items)
            result, error, attempts = await call_agent(
                client, stage.agent, stage.settings, text, None, stage.contract_retries
            )
            ids = [g.id for g in items]
            rid = content_hash("reduce", stage.name, str(level), *ids)
            return result_row(stage, stage.agent, rid, ids, level, info, result, error, attempts, False)

        before = outcome.attempted
        last = await _run_in_parts(
            _groups(_counting(current, counted), budget),
            combine,
            group=group,
            client=client,
            stage=stage,
            outcome=outcome,
            sink=sink,
            progress=progress,
            part_size=REDUCE_PART_GROUPS,
        )
        produced = outcome.attempted - before
        if produced <= 1:  # one call combined everything (or nothing was left): that row is the answer
            _mark_final(group, last, outcome, sink, produced)
            return outcome
        if level > 1 and produced == counted["in"]:
            raise ConvergenceError(
                f"stage {stage.name!r}: reduce cannot converge at level {level}: each of the {produced} "
                f"answers fills the {budget}-token budget of a call alone; raise the agent's contextTokens "
                "or lower its NUM_PREDICT"
            )
        current = _level_output(group, outcome, sink, produced)


def _level_output(
    group: str, outcome: StageOutcome, sink: ResultParts | None, produced: int
) -> Iterator[InputRecord]:
    rows: Iterable[dict[str, Any]] = sink.rows(group) if sink is not None else outcome.rows[-produced:]
    for row in rows:
        if row["error"] is None:
            yield InputRecord(row["result_id"], row["response"])


def _mark_final(
    group: str, last: list[dict[str, Any]], outcome: StageOutcome, sink: ResultParts | None, produced: int
) -> None:
    """The single row of the last level is the stage's answer (its part is rewritten so)."""
    if produced != 1:
        return
    if sink is None:
        outcome.rows[-1]["final"] = True
        return
    rows = last or sink.read(group, 0).to_pylist()  # a resumed step: the part is already written
    rows[-1]["final"] = True
    sink.write(group, 0, rows)


async def run_chat(
    clients: ModelClient | ClientFor,
    stage: StageSpec,
    records: Iterable[InputRecord],
    progress: ProgressFn | None = None,
    sink: ResultParts | None = None,
) -> StageOutcome:
    """Agents take turns for `rounds` rounds over one transcript; a judge may close it. The input
    is read only until half the smallest context window is filled: the transcript needs the rest."""
    client_for = client_resolver(clients)
    speakers = [stage.agent, *stage.participants]
    everyone = stage.agents
    infos = {a.name: await client_for(a).model_info(a.model) for a in everyone}
    enc = load_encoding()
    window = max(256, min(context_tokens(a, infos[a.name]) for a in everyone) // 2)
    tokens: list[int] = []
    ids: list[str] = []
    for rec in records:
        ids.append(rec.id)
        tokens += enc.encode_ordinary(("\n\n" if tokens else "") + rec.text)
        if len(tokens) >= window:
            break
    context = enc.decode(tokens[:window])
    transcript: list[dict[str, str]] = []
    outcome = StageOutcome()
    rows: list[dict[str, Any]] = []
    turns = [
        *(agent for _ in range(stage.rounds) for agent in speakers),
        *([stage.judge] if stage.judge else []),
    ]
    async with contextlib.AsyncExitStack() as segments:
        distinct = {id(c): c for c in (client_for(a) for a in everyone)}
        for c in distinct.values():  # one cache segment per model server
            await segments.enter_async_context(c.segment(f"{stage.cache_prefix}/chat", 0))
        for turn, agent in enumerate(turns, start=1):
            result, error, attempts = await call_agent(
                client_for(agent), agent, stage.settings, context, transcript, stage.contract_retries
            )
            rid = content_hash("chat", stage.name, str(turn), agent.name, *ids)
            row = result_row(
                stage, agent, rid, ids, turn, infos[agent.name], result, error, attempts, turn == len(turns)
            )
            rows.append(row)
            if result is not None and error is None:
                transcript.append({"speaker": agent.name, "content": result.content})
            if progress:
                progress(1)
    outcome.count(rows)
    if sink is not None:
        sink.write("chat", 0, rows)
    else:
        outcome.rows = rows
    return outcome


MODES = {"map": run_map, "reduce": run_reduce, "chat": run_chat}


async def run_stage(
    clients: ModelClient | ClientFor,
    stage: StageSpec,
    records: Iterable[InputRecord],
    progress: ProgressFn | None = None,
    sink: ResultParts | None = None,
) -> StageOutcome:
    try:
        runner = MODES[stage.mode]
    except KeyError:
        raise ValueError(
            f"stage {stage.name!r}: unknown mode {stage.mode!r}; modes are {sorted(MODES)}"
        ) from None
    return await runner(clients, stage, records, progress, sink)
