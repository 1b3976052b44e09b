"""Stage modes: map (one call per record), reduce (token-budgeted hierarchical combine) and chat
(agents take turns over a shared transcript, optionally closed by a judge).

A stage turns input records into `results` rows (etl.schemas.RESULTS). One record that fails
becomes an error row (a dead letter) and the stage goes on; the stage fails only when the
errors exceed its budget, and even then every row it produced is returned.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aistack.etl.encodings import load_encoding
from aistack.etl.schemas import content_hash
from aistack.steps.model_client import CallResult, ModelCallError, ModelClient
from aistack.steps.roles import AgentConfig, StageSettings, role

DEFAULT_CONTEXT = 8192


@dataclass(frozen=True)
class InputRecord:
    id: str
    text: str


@dataclass
class StageSpec:
    name: str
    mode: str  # map | reduce | chat
    agent: AgentConfig
    settings: StageSettings = field(default_factory=StageSettings)
    participants: list[AgentConfig] = field(default_factory=list)  # chat: others taking turns
    judge: AgentConfig | None = None
    rounds: int = 1
    error_budget_percent: float = 5.0
    contract_retries: int = 2  # re-asks after output that breaks the role's contract


class StageFailedError(Exception):
    """More records failed than the stage's error budget allows."""


@dataclass
class StageOutcome:
    rows: list[dict[str, Any]] = field(default_factory=list)
    attempted: int = 0
    errors: int = 0

    @property
    def final(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["final"] and r["error"] is None]

    def totals(self) -> dict[str, int]:
        return {
            "rows": len(self.rows),
            "errors": self.errors,
            "cached": sum(r["cached"] for r in self.rows),
            "prompt_tokens": sum(r["prompt_tokens"] for r in self.rows),
            "eval_tokens": sum(r["eval_tokens"] for r in self.rows),
            # model time of the calls made in this run (cached rows cost none)
            "call_ns": sum(r["total_duration_ns"] for r in self.rows if not r["cached"]),
        }

    def over_budget(self, percent: float) -> bool:
        return self.errors * 100 > percent * max(1, self.attempted)


ProgressFn = Callable[[int], None]


async def call_agent(
    client: ModelClient,
    agent: AgentConfig,
    settings: StageSettings,
    text: str,
    transcript: list[dict[str, str]] | None,
    contract_retries: int,
) -> tuple[CallResult | None, str | None, int]:
    """Call an agent and enforce its role's contract: (result, error, attempts)."""
    r = role(agent.role)
    messages = r.messages(text, settings, transcript)
    schema = r.output_schema(settings)
    prompt_hash = r.template_hash(settings)
    attempts = 0
    for _ in range(contract_retries + 1):
        try:
            result = await client.chat(
                agent.model,
                messages,
                options=agent.options,
                fmt=schema,
                keep_alive=agent.keep_alive,
                prompt_hash=prompt_hash,
                input_hash=content_hash(json.dumps(messages[1:], sort_keys=True)),
            )
        except ModelCallError as exc:
            return None, str(exc), attempts + exc.attempts
        attempts += result.attempts
        _, problem = r.check(result.content, settings)
        if problem is None:
            return result, None, attempts
        # ask again, showing the model what was wrong
        messages = [
            *messages,
            {"role": "assistant", "content": result.content},
            {
                "role": "user",
                "content": f"That answer is invalid: {problem}. Answer again, following the output contract.",
            },
        ]
    return None, f"output contract violated after {contract_retries + 1} tries: {problem}", attempts


def _row(
    stage: StageSpec, agent: AgentConfig, result_id: str, inputs: list[str], level: int, digest: str,
    result: CallResult | None, error: str | None, attempts: int, final: bool,
) -> dict[str, Any]:  # fmt: skip
    r = role(agent.role)
    res = result or CallResult(content="")
    return {
        "result_id": result_id,
        "input_ids": inputs,
        "stage": stage.name,
        "mode": stage.mode,
        "level": level,
        "agent": agent.name,
        "model": agent.model,
        "model_digest": digest,
        "role": r.name,
        "prompt_hash": r.template_hash(stage.settings),
        "response": None if error else res.content,
        "prompt_tokens": res.prompt_tokens,
        "eval_tokens": res.eval_tokens,
        "total_duration_ns": res.total_duration_ns,
        "load_duration_ns": res.load_duration_ns,
        "prompt_eval_duration_ns": res.prompt_eval_duration_ns,
        "eval_duration_ns": res.eval_duration_ns,
        "attempts": attempts,
        "cached": bool(result and result.cached),
        "final": final,
        "error": error,
    }


async def _digest(client: ModelClient, model: str) -> str:
    return (await client.model_info(model)).digest


async def run_map(
    client: ModelClient, stage: StageSpec, records: Iterable[InputRecord], progress: ProgressFn | None = None
) -> StageOutcome:
    """One call per record, at most `client.concurrency` in flight, rows in input order."""
    digest = await _digest(client, stage.agent.model)
    outcome = StageOutcome()
    window = asyncio.Semaphore(max(1, client.concurrency) * 4)  # bounds memory, not the server

    async def one(record: InputRecord) -> dict[str, Any]:
        try:
            result, error, attempts = await call_agent(
                client, stage.agent, stage.settings, record.text, None, stage.contract_retries
            )
            rid = content_hash("map", stage.name, record.id)
            return _row(stage, stage.agent, rid, [record.id], 0, digest, result, error, attempts, True)
        finally:
            window.release()
            if progress:
                progress(1)

    tasks = []
    for record in records:
        await window.acquire()
        tasks.append(asyncio.create_task(one(record)))
    outcome.rows = list(await asyncio.gather(*tasks))
    outcome.attempted = len(outcome.rows)
    outcome.errors = sum(r["error"] is not None for r in outcome.rows)
    return outcome


def _groups(records: list[InputRecord], budget: int) -> list[list[InputRecord]]:
    """Consecutive records whose joined text fits `budget` tokens (a record alone may not)."""
    enc = load_encoding()
    groups: list[list[InputRecord]] = []
    current: list[InputRecord] = []
    used = 0
    for rec in records:
        tokens = len(enc.encode_ordinary(rec.text)) + 2
        if current and used + tokens > budget:
            groups.append(current)
            current, used = [], 0
        current.append(rec)
        used += tokens
    if current:
        groups.append(current)
    return groups


async def run_reduce(
    client: ModelClient, stage: StageSpec, records: Iterable[InputRecord], progress: ProgressFn | None = None
) -> StageOutcome:
    """Combine records level by level, each call within the model's context, until one remains."""
    info = await client.model_info(stage.agent.model)
    r = role(stage.agent.role)
    context = stage.agent.context_tokens or info.context_length or DEFAULT_CONTEXT
    budget = max(64, context - r.overhead_tokens(stage.settings) - r.answer_tokens)
    outcome = StageOutcome()
    current = list(records)
    level = 0
    while len(current) > 1 or (level == 0 and current):
        groups = _groups(current, budget)
        level += 1
        last_level = len(groups) == 1

        async def combine(
            group: list[InputRecord], level: int = level, last: bool = last_level
        ) -> dict[str, Any]:
            text = "\n\n".join(g.text for g in group)
            result, error, attempts = await call_agent(
                client, stage.agent, stage.settings, text, None, stage.contract_retries
            )
            ids = [g.id for g in group]
            rid = content_hash("reduce", stage.name, str(level), *ids)
            if progress:
                progress(1)
            return _row(stage, stage.agent, rid, ids, level, info.digest, result, error, attempts, last)

        rows = list(await asyncio.gather(*(combine(g) for g in groups)))
        outcome.rows += rows
        outcome.attempted += len(rows)
        outcome.errors += sum(row["error"] is not None for row in rows)
        current = [InputRecord(row["result_id"], row["response"]) for row in rows if row["error"] is None]
        if last_level:
            break
    return outcome


async def run_chat(
    client: ModelClient, stage: StageSpec, records: Iterable[InputRecord], progress: ProgressFn | None = None
) -> StageOutcome:
    """Agents take turns for `rounds` rounds over one transcript; a judge may close it."""
    speakers = [stage.agent, *stage.participants]
    inputs = list(records)
    enc = load_encoding()
    windows = [
        a.context_tokens or (await client.model_info(a.model)).context_length or DEFAULT_CONTEXT
        for a in speakers
    ]
    context_tokens = min(windows)
    tokens = enc.encode_ordinary("\n\n".join(rec.text for rec in inputs))
    context = enc.decode(tokens[: max(256, context_tokens // 2)])  # half the window for the transcript
    ids = [rec.id for rec in inputs]
    transcript: list[dict[str, str]] = []
    outcome = StageOutcome()
    turn = 0
    closing = stage.judge
    for _ in range(stage.rounds):
        for agent in speakers:
            turn += 1
            result, error, attempts = await call_agent(
                client, agent, stage.settings, context, transcript, stage.contract_retries
            )
            digest = await _digest(client, agent.model)
            final = closing is None and turn == stage.rounds * len(speakers)
            rid = content_hash("chat", stage.name, str(turn), agent.name, *ids)
            outcome.rows.append(_row(stage, agent, rid, ids, turn, digest, result, error, attempts, final))
            if result is not None and error is None:
                transcript.append({"speaker": agent.name, "content": result.content})
            if progress:
                progress(1)
    if closing is not None:
        turn += 1
        result, error, attempts = await call_agent(
            client, closing, stage.settings, context, transcript, stage.contract_retries
        )
        rid = content_hash("chat", stage.name, str(turn), closing.name, *ids)
        digest = await _digest(client, closing.model)
        outcome.rows.append(_row(stage, closing, rid, ids, turn, digest, result, error, attempts, True))
        if progress:
            progress(1)
    outcome.attempted = len(outcome.rows)
    outcome.errors = sum(r["error"] is not None for r in outcome.rows)
    return outcome


MODES = {"map": run_map, "reduce": run_reduce, "chat": run_chat}


async def run_stage(
    client: ModelClient, stage: StageSpec, records: Iterable[InputRecord], progress: ProgressFn | None = None
) -> StageOutcome:
    try:
        runner = MODES[stage.mode]
    except KeyError:
        raise ValueError(
            f"stage {stage.name!r}: unknown mode {stage.mode!r}; modes are {sorted(MODES)}"
        ) from None
    return await runner(client, stage, records, progress)
