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
from aistack.steps.model_client import CallResult, ModelCallError, ModelClient, ModelInfo
from aistack.steps.roles import AgentConfig, StageSettings, role

# Ollama's default num_ctx (below 24 GiB of VRAM): what a model gets unless the agent pins
# contextTokens, whatever it was trained for (/api/show reports the trained length)
DEFAULT_CONTEXT = 4096
# budgets are counted with cl100k_base; the model's own tokenizer may need more tokens for the
# same text, so only this share of its context is planned for
TOKENIZER_MARGIN = 0.8
# a JSON answer needs room: llama.cpp ignores the grammar below ~12 tokens, and a cut-off JSON
# object is invalid (measured on SmolLM2-135M)
JSON_MIN_PREDICT = 128


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
# the client that reaches an agent's model server (agents of one stage may live on several hosts)
ClientFor = Callable[[AgentConfig], ModelClient]


def client_resolver(clients: ModelClient | ClientFor) -> ClientFor:
    return (lambda _agent: clients) if isinstance(clients, ModelClient) else clients


def context_tokens(agent: AgentConfig, info: ModelInfo) -> int:
    """The tokens a call to this agent may plan for: its pinned num_ctx, else Ollama's default
    num_ctx (never more than the model was trained for), less the tokenizer margin."""
    window = agent.context_tokens or min(info.context_length or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    return int(window * TOKENIZER_MARGIN)


def _json_options(options: dict[str, Any]) -> dict[str, Any]:
    """A JSON contract's options: num_predict, when bounded, never below the floor."""
    predict = options.get("num_predict")
    if isinstance(predict, int) and 0 < predict < JSON_MIN_PREDICT:
        return {**options, "num_predict": JSON_MIN_PREDICT}
    return options


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
    options = agent.options if schema is None else _json_options(agent.options)
    attempts = 0
    for _ in range(contract_retries + 1):
        try:
            result = await client.chat(
                agent.model,
                messages,
                options=options,
                fmt=schema,
                keep_alive=agent.keep_alive,
                prompt_hash=prompt_hash,
                input_hash=content_hash(json.dumps(messages[1:], sort_keys=True)),
            )
        except ModelCallError as exc:
            return None, str(exc), attempts + exc.attempts
        attempts += result.attempts
        _, problem = r.check(result.content, settings)
        if schema is not None and result.done_reason == "length":
            # cut off at num_predict: even if it parses, the model did not finish its answer
            problem = "the answer was cut off at the num_predict limit (done_reason: length)"
            if isinstance(options.get("num_predict"), int) and options["num_predict"] > 0:
                options = {**options, "num_predict": options["num_predict"] * 2}
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
    stage: StageSpec, agent: AgentConfig, result_id: str, inputs: list[str], level: int, info: ModelInfo,
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
        "served_model": info.served_model or agent.model,
        "engine": info.engine,
        "model_digest": info.digest,
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


async def run_map(
    clients: ModelClient | ClientFor,
    stage: StageSpec,
    records: Iterable[InputRecord],
    progress: ProgressFn | None = None,
) -> StageOutcome:
    """One call per record, at most `client.concurrency` in flight, rows in input order."""
    client = client_resolver(clients)(stage.agent)
    info = await client.model_info(stage.agent.model)
    outcome = StageOutcome()
    window = asyncio.Semaphore(max(1, client.concurrency) * 4)  # bounds memory, not the server

    async def one(record: InputRecord) -> dict[str, Any]:
        try:
            result, error, attempts = await call_agent(
                client, stage.agent, stage.settings, record.text, None, stage.contract_retries
            )
            rid = content_hash("map", stage.name, record.id)
            return _row(stage, stage.agent, rid, [record.id], 0, info, result, error, attempts, True)
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
    clients: ModelClient | ClientFor,
    stage: StageSpec,
    records: Iterable[InputRecord],
    progress: ProgressFn | None = None,
) -> StageOutcome:
    """Combine records level by level, each call within the model's context, until one remains."""
    client = client_resolver(clients)(stage.agent)
    info = await client.model_info(stage.agent.model)
    r = role(stage.agent.role)
    context = context_tokens(stage.agent, info)
    budget = max(64, context - r.overhead_tokens(stage.settings) - r.answer_tokens)
    outcome = StageOutcome()
    current = list(records)
    level = 0
    while len(current) > 1 or (level == 0 and current):
        groups = _groups(current, budget)
        if level > 0 and len(groups) == len(current):
            # every answer alone fills a call: another level would only rewrite them one by one
            raise StageFailedError(
                f"stage {stage.name!r}: reduce cannot converge at level {level + 1}: each of the "
                f"{len(current)} answers fills the {budget}-token budget of a call alone; raise the "
                "agent's contextTokens or lower its NUM_PREDICT"
            )
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
            return _row(stage, stage.agent, rid, ids, level, info, result, error, attempts, last)

        rows = list(await asyncio.gather(*(combine(g) for g in groups)))
        outcome.rows += rows
        outcome.attempted += len(rows)
        outcome.errors += sum(row["error"] is not None for row in rows)
        current = [InputRecord(row["result_id"], row["response"]) for row in rows if row["error"] is None]
        if last_level:
            break
    return outcome


async def run_chat(
    clients: ModelClient | ClientFor,
    stage: StageSpec,
    records: Iterable[InputRecord],
    progress: ProgressFn | None = None,
) -> StageOutcome:
    """Agents take turns for `rounds` rounds over one transcript; a judge may close it."""
    client_for = client_resolver(clients)
    speakers = [stage.agent, *stage.participants]
    everyone = [*speakers, *([stage.judge] if stage.judge else [])]
    infos = {a.name: await client_for(a).model_info(a.model) for a in everyone}
    inputs = list(records)
    enc = load_encoding()
    window = min(context_tokens(a, infos[a.name]) for a in everyone)
    tokens = enc.encode_ordinary("\n\n".join(rec.text for rec in inputs))
    context = enc.decode(tokens[: max(256, window // 2)])  # half the window for the transcript
    ids = [rec.id for rec in inputs]
    transcript: list[dict[str, str]] = []
    outcome = StageOutcome()
    turn = 0
    closing = stage.judge
    for _ in range(stage.rounds):
        for agent in speakers:
            turn += 1
            result, error, attempts = await call_agent(
                client_for(agent), agent, stage.settings, context, transcript, stage.contract_retries
            )
            final = closing is None and turn == stage.rounds * len(speakers)
            rid = content_hash("chat", stage.name, str(turn), agent.name, *ids)
            info = infos[agent.name]
            outcome.rows.append(_row(stage, agent, rid, ids, turn, info, result, error, attempts, final))
            if result is not None and error is None:
                transcript.append({"speaker": agent.name, "content": result.content})
            if progress:
                progress(1)
    if closing is not None:
        turn += 1
        result, error, attempts = await call_agent(
            client_for(closing), closing, stage.settings, context, transcript, stage.contract_retries
        )
        rid = content_hash("chat", stage.name, str(turn), closing.name, *ids)
        info = infos[closing.name]
        outcome.rows.append(_row(stage, closing, rid, ids, turn, info, result, error, attempts, True))
        if progress:
            progress(1)
    outcome.attempted = len(outcome.rows)
    outcome.errors = sum(r["error"] is not None for r in outcome.rows)
    return outcome


MODES = {"map": run_map, "reduce": run_reduce, "chat": run_chat}


async def run_stage(
    clients: ModelClient | ClientFor,
    stage: StageSpec,
    records: Iterable[InputRecord],
    progress: ProgressFn | None = None,
) -> StageOutcome:
    try:
        runner = MODES[stage.mode]
    except KeyError:
        raise ValueError(
            f"stage {stage.name!r}: unknown mode {stage.mode!r}; modes are {sorted(MODES)}"
        ) from None
    return await runner(clients, stage, records, progress)
