"""Agent roles: versioned prompt templates with an output contract.

A role turns a record (and the stage's settings: question, labels, output schema) into chat
messages, and says what a valid answer is: free text, or JSON matching a schema that is also
sent to Ollama as `format`. The template's content hash is part of every result and of the
cache key, so editing a prompt re-runs exactly the calls it affects.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from aistack.crds.models import AgentRole
from aistack.etl.encodings import load_encoding
from aistack.etl.schemas import content_hash


@dataclass(frozen=True)
class StageSettings:
    """What a stage adds to a role: the question, labels, an output schema, a prompt override."""

    question: str | None = None
    labels: tuple[str, ...] | None = None
    output_schema: dict[str, Any] | None = None
    prompt: str | None = None  # replaces the role's instruction


@dataclass(frozen=True)
class Role:
    name: str
    version: str
    system: str
    instruction: str
    json_output: bool = False
    answer_tokens: int = 512  # budget reserved for the answer when sizing chunks

    def template_hash(self, settings: StageSettings = StageSettings()) -> str:
        return content_hash(
            self.name,
            self.version,
            self.system,
            settings.prompt or self.instruction,
            json.dumps(self.output_schema(settings), sort_keys=True),
        )

    def output_schema(self, settings: StageSettings) -> dict[str, Any] | None:
        if self.name == AgentRole.CLASSIFIER:
            labels = list(settings.labels or ())
            return {
                "type": "object",
                "properties": {"label": {"type": "string", "enum": labels}, "reason": {"type": "string"}},
                "required": ["label", "reason"],
            }
        if self.name == AgentRole.EXTRACTOR:
            return settings.output_schema or {"type": "object"}
        if self.json_output:
            return {"type": "object"}
        return None

    def messages(
        self, text: str, settings: StageSettings, transcript: list[dict[str, str]] | None = None
    ) -> list[dict[str, str]]:
        """The chat messages for one call. Sections are labelled so any model can follow them, and
        the instruction comes last, after the material, where small models heed it best."""
        parts = []
        if settings.labels:
            parts.append("### Labels\n" + "\n".join(f"- {label}" for label in settings.labels))
        schema = self.output_schema(settings)
        if schema is not None:
            parts.append(
                "### Output\nAnswer with JSON matching this schema:\n" + json.dumps(schema, sort_keys=True)
            )
        parts.append(f"### Context\n{text}")
        if transcript:
            conversation = "\n\n".join(f"[{m['speaker']}] {m['content']}" for m in transcript)
            parts.append(f"### Conversation so far\n{conversation}")
        if settings.question:
            parts.append(f"### Question\n{settings.question}")
        parts.append(f"### Instruction\n{settings.prompt or self.instruction}")
        return [{"role": "system", "content": self.system}, {"role": "user", "content": "\n\n".join(parts)}]

    def overhead_tokens(self, settings: StageSettings = StageSettings()) -> int:
        """Tokens of the prompt around the record: what a chunk must leave room for."""
        encoding = load_encoding()
        return sum(len(encoding.encode_ordinary(m["content"])) + 4 for m in self.messages("", settings))

    def check(self, response: str, settings: StageSettings) -> tuple[Any, str | None]:
        """Parse and validate a response against the contract: (value, error or None)."""
        schema = self.output_schema(settings)
        if schema is None:
            text = response.strip()
            return text, None if text else "empty response"
        try:
            value = json.loads(response)
        except json.JSONDecodeError as exc:
            return None, f"response is not JSON: {exc}"
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            return None, f"response does not match the output schema at {where}: {exc.message}"
        return value, None


NO_ANSWER = "The context does not contain the answer."


def is_no_answer(response: str) -> bool:
    """A Q&A answer that says the context lacks the answer (models often go on after saying so)."""
    return response.strip().lower().startswith(NO_ANSWER.lower().rstrip("."))


ROLES: dict[str, Role] = {
    r.name: r
    for r in [
        Role(
            AgentRole.SUMMARIZER,
            "2",
            "You write short, faithful summaries of the given context.",
            "Summarize the context in two or three sentences. Keep facts, names and numbers; add nothing.",
            answer_tokens=256,
        ),
        Role(
            AgentRole.QNA,
            "2",
            "You answer questions using only the given context.",
            "Answer the question in one or two sentences, using only the context. "
            f"If the context does not answer the question, reply exactly: {NO_ANSWER}",
            answer_tokens=256,
        ),
        Role(
            AgentRole.CLASSIFIER,
            "2",
            "You classify the given context with one of the given labels.",
            "Classify the context with exactly one of the labels and give a one-sentence reason, as JSON.",
            json_output=True,
            answer_tokens=128,
        ),
        Role(
            AgentRole.EXTRACTOR,
            "2",
            "You extract structured data from the given context.",
            "Extract the fields of the output schema from the context, as JSON. "
            "Use only values present in the context.",
            json_output=True,
        ),
        Role(
            AgentRole.JUDGE,
            "2",
            "You judge a conversation and give the final, best-supported answer.",
            "Read the conversation and give the final verdict in a few sentences: the best-supported "
            "answer to the question.",
            answer_tokens=256,
        ),
        Role(
            AgentRole.ASSISTANT,
            "2",
            "You take part in a conversation about the given context.",
            "Continue the conversation: in two or three sentences, add the most relevant point from the "
            "context that has not been made yet.",
            answer_tokens=256,
        ),
    ]
}


@functools.cache
def role(name: str) -> Role:
    try:
        return ROLES[name]
    except KeyError:
        raise ValueError(f"unknown agent role {name!r}; roles are {sorted(ROLES)}") from None


def options_from_env(env: list[dict[str, str]] | list[Any]) -> dict[str, Any]:
    """Ollama request options from an OllamaAgent's env entries (see OLLAMA_OPTION_ENV)."""
    from aistack.crds.models import OLLAMA_OPTION_ENV

    options: dict[str, Any] = {}
    for entry in env:
        name, value = (
            (entry["name"], entry["value"]) if isinstance(entry, dict) else (entry.name, entry.value)
        )
        if name in OLLAMA_OPTION_ENV:
            option, kind = OLLAMA_OPTION_ENV[name]
            try:
                options[option] = [value] if option == "stop" else kind(value)
            except ValueError:
                raise ValueError(
                    f"env {name}={value!r} is not a valid {kind.__name__} for Ollama option {option}"
                ) from None
    return options


@dataclass
class AgentConfig:
    """What a stage needs of an OllamaAgent to call it."""

    name: str
    model: str
    role: str
    options: dict[str, Any] = field(default_factory=dict)
    keep_alive: str = "5m"
    num_parallel: int = 1
    context_tokens: int | None = None
