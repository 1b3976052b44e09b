"""One agent call under its role's contract, and the results row it becomes.

The contract: free text, or JSON matching a schema that is also sent as Ollama's `format`;
output that breaks it is re-asked (showing the model the error) and then dead-lettered, never
passed on invalid. Context budgets are planned in cl100k_base tokens against what the model
really gets: the agent's pinned num_ctx, else Ollama's default.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    cache_scope: str = ""  # where this step's answers live in the result cache (e.g. its shard)

    @property
    def agents(self) -> list[AgentConfig]:
        """Every agent the stage calls: its own, the other participants, the judge."""
        return [self.agent, *self.participants, *([self.judge] if self.judge else [])]

    @property
    def cache_prefix(self) -> str:
        """The result cache's segment prefix for this step: its scope, else the stage's name."""
        return self.cache_scope or self.name


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


def result_row(
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
