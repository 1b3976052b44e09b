"""The embedded model server's extractive engine: small, deterministic, CPU-only, no weights.

It is not a language model. It reads the labelled sections of aistack's role prompts
(`### Question`, `### Labels`, `### Output`, `### Context`, `### Conversation so far`) and
answers by quoting: extractive summaries (sentences scored by term frequency), question
answering by retrieval (the context sentences that best match the question, or a refusal
when none does), label scoring for classification, and schema-filling for JSON output (always
valid for the schema it was given). Same input, same output.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import Counter
from typing import Any

from aistack.etl.encodings import load_encoding
from aistack.steps.engine_api import Generation, GenerationRequest, ModelCard, PieceFn
from aistack.steps.roles import NO_ANSWER, ROLES

ENGINE_VERSION = "4"  # part of every model digest: bump when answers change
REFUSAL = NO_ANSWER  # what a QnA agent says when the context lacks the answer
_SECTION = re.compile(
    r"^### (Question|Labels|Output|Context|Conversation so far|Instruction)\n", re.MULTILINE
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])|\n{2,}")
_WORD = re.compile(r"[A-Za-z0-9]+(?:'[a-z]+)?")
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "not",
        "no",
        "yes",
    ]
)


def _stem(word: str) -> str:
    """A light plural/verb -s stemmer, enough to match "consists" with "consist"."""
    return word[:-1] if len(word) > 4 and word.endswith("s") and not word.endswith("ss") else word


def words(text: str) -> list[str]:
    return [_stem(w) for w in (m.group().lower() for m in _WORD.finditer(text)) if w not in _STOP]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s and len(s.strip()) > 1]


def sections(prompt: str) -> dict[str, str]:
    found: dict[str, str] = {}
    matches = list(_SECTION.finditer(prompt))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(prompt)
        found[m.group(1)] = prompt[m.end() : end].strip()
    if not matches:
        found["Context"] = prompt.strip()
    return found


def _budget(text: str, max_words: int) -> str:
    out = text.split()
    return text if len(out) <= max_words else " ".join(out[:max_words]) + " …"


_CODE = ("{", "}", "()", " = ", ">>>", "::", "def ", "import ", "#")


def _prose(sentence: str) -> bool:
    """Mostly words, several of them: not code, tables or markup."""
    letters = sum(c.isalpha() or c == " " for c in sentence)
    return (
        6 <= len(sentence.split()) <= 60
        and letters >= 0.9 * len(sentence)
        and not any(t in sentence for t in _CODE)
    )


def summarize(text: str, max_sentences: int = 3) -> str:
    """The highest-scoring prose sentences (term frequency, length-normalised), in order."""
    sents = sentences(text)
    sents = [s for s in sents if _prose(s)] or sents
    if len(sents) <= max_sentences:
        return " ".join(sents) or text.strip()
    freq = Counter(words(text))
    scored = []
    for i, s in enumerate(sents):
        ws = words(s)
        score = sum(freq[w] for w in set(ws)) / math.sqrt(len(ws) + 1) if ws else 0.0
        scored.append((score, -i, s))
    best = sorted(scored, reverse=True)[:max_sentences]
    return " ".join(s for _, i, s in sorted(best, key=lambda t: -t[1]))


def answer(question: str, context: str) -> str:
    """Quote the context sentences that best cover the question's terms, or refuse."""
    q = set(words(question))
    if not q:
        return REFUSAL
    scored = []
    for i, s in enumerate(sentences(context)):
        overlap = q & set(words(s))
        scored.append((len(overlap) / len(q), -i, s))
    scored.sort(reverse=True)
    if not scored or scored[0][0] < 0.5:
        return REFUSAL
    chosen = [t for t in scored[:2] if t[0] >= max(0.5, scored[0][0] - 0.25)]
    return " ".join(f'"{s.strip(chr(34))}"' for _, _, s in sorted(chosen, key=lambda t: -t[1]))


def best_label(labels: list[str], text: str) -> tuple[str, str]:
    """The label whose words occur most often in the text (ties: the first label)."""
    freq = Counter(words(text))
    scores = [(sum(freq[w] for w in words(label)) + 0.0, -i, label) for i, label in enumerate(labels)]
    score, _, label = max(scores)
    hits = [w for w in words(label) if freq[w]]
    reason = (
        f"The text mentions {', '.join(hits)}."
        if hits and score
        else "No label term occurs; first label chosen."
    )
    return label, reason


def fill_schema(schema: dict[str, Any], text: str, name: str = "") -> Any:
    """A value valid for `schema`, taken from the text where the schema allows."""
    kind = schema.get("type")
    if "enum" in schema:
        return (
            best_label([str(v) for v in schema["enum"]], text + " " + name)[0]
            if all(isinstance(v, str) for v in schema["enum"])
            else schema["enum"][0]
        )
    if "const" in schema:
        return schema["const"]
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {key: fill_schema(sub, text, key) for key, sub in props.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [fill_schema(schema.get("items", {}), text, name) for _ in range(count)]
    if kind in ("integer", "number"):
        found = re.search(r"-?\d+(?:\.\d+)?", text)
        value: float = float(found.group()) if found else 0.0
        lo, hi = schema.get("minimum"), schema.get("maximum")
        value = max(value, lo) if lo is not None else value
        value = min(value, hi) if hi is not None else value
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return bool(set(words(name)) & set(words(text))) if name else True
    if kind == "null":
        return None
    # string: the sentence that best matches the field name, within the length limits
    key = set(words(name.replace("_", " ")))
    sents = sentences(text) or [text.strip() or name]
    best = max(sents, key=lambda s: (len(key & set(words(s))), -sents.index(s)))
    lo, hi = int(schema.get("minLength", 0)), schema.get("maxLength")
    best = best[: int(hi)] if hi is not None else best
    return best.ljust(lo, ".")


def respond(prompt: str, system: str = "", json_format: Any = None, max_words: int = 120) -> str:
    """The engine's answer to one request (the chat's messages flattened, or a prompt)."""
    parts = sections(prompt)
    context = parts.get("Context", "")
    role = next((r.name for r in ROLES.values() if r.system and r.system in system), "summarizer")
    if isinstance(json_format, dict) or json_format == "json":
        schema = json_format if isinstance(json_format, dict) else {"type": "object"}
        if role == "classifier" and parts.get("Labels"):
            labels = [line[2:].strip() for line in parts["Labels"].splitlines() if line.startswith("- ")]
            label, reason = best_label(labels, context)
            value: Any = {"label": label, "reason": reason}
            # honour the caller's schema even if it is not the classifier's usual one
            if set(schema.get("properties", {})) != {"label", "reason"}:
                value = fill_schema(schema, context)
        else:
            value = fill_schema(schema, context)
        return json.dumps(value, ensure_ascii=False)
    conversation = parts.get("Conversation so far", "")
    if role == "qna":
        return answer(parts.get("Question", ""), context)
    if role == "judge":
        return "Verdict: " + _budget(summarize(conversation or context, 2), max_words)
    if role == "assistant":
        said = set(words(conversation))
        fresh = [s for s in sentences(context) if set(words(s)) - said]
        topic = set(words(parts.get("Question", "") + " " + conversation[-400:]))
        if not fresh:
            return "I have nothing to add: the context's points have all been made."
        pick = max(fresh, key=lambda s: (len(topic & set(words(s))), -fresh.index(s)))
        return _budget(pick, max_words)
    return _budget(summarize(context), max_words)


EXTRACTIVE_MODEL = "aistack-extractive:latest"


class ExtractiveEngine:
    """The extractive answers behind the Ollama API: tokens counted with cl100k_base, `num_predict`
    honoured for free text (JSON is never cut, so it stays valid), nothing to load."""

    name = "aistack-extractive"
    context_length = 8192

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}

    def card(self) -> ModelCard:
        digest = hashlib.sha256(f"aistack-extractive/{ENGINE_VERSION}".encode()).hexdigest()
        return ModelCard(
            engine=f"aistack-extractive {ENGINE_VERSION}",
            served_model=EXTRACTIVE_MODEL,
            digest=digest,
            size=0,
            details={
                "parent_model": "",
                "format": "aistack",
                "family": "aistack-extractive",
                "families": ["aistack-extractive"],
                "parameter_size": "0",
                "quantization_level": "none",
            },
            model_info={
                "general.architecture": "aistack-extractive",
                "general.description": "aistack embedded extractive engine (not a language model)",
                "aistack-extractive.context_length": self.context_length,
            },
            context_length=self.context_length,
            template="{{ .Prompt }}",
            modelfile="# aistack embedded engine: deterministic and extractive, not a language model.\n"
            f"# It quotes and scores the given context; engine version {ENGINE_VERSION}.\n",
            parameters=f"num_ctx {self.context_length}",
        )

    async def generate(self, request: GenerationRequest, on_piece: PieceFn | None = None) -> Generation:
        started = time.perf_counter_ns()
        if request.raw_prompt is not None:
            system, prompt = "", request.raw_prompt
        else:
            system = "\n".join(m.get("content", "") for m in request.messages if m.get("role") == "system")
            prompt = "\n\n".join(m.get("content", "") for m in request.messages if m.get("role") != "system")
        content = respond(prompt, system, request.format or None)
        enc = load_encoding()
        reason = "stop"
        num_predict = request.options.get("num_predict")
        if isinstance(num_predict, int) and num_predict > 0 and request.format is None:
            tokens = enc.encode_ordinary(content)
            if len(tokens) > num_predict:
                content, reason = enc.decode(tokens[:num_predict]), "length"
        if on_piece is not None:
            for i, piece in enumerate(content.split(" ")):
                on_piece(piece if i == 0 else " " + piece)
        elapsed = time.perf_counter_ns() - started
        self._touch(request)
        return Generation(
            content=content,
            done_reason=reason,
            prompt_tokens=len(enc.encode_ordinary(system + prompt)),
            eval_tokens=len(enc.encode_ordinary(content)) if content else 0,
            prompt_eval_ns=elapsed // 2,
            eval_ns=elapsed - elapsed // 2,
        )

    async def load(self, request: GenerationRequest) -> int:
        self._touch(request)
        return 1_000_000

    def _touch(self, request: GenerationRequest) -> None:
        if request.keep_alive <= 0:
            self._expiry.pop(request.model, None)
        else:
            self._expiry[request.model] = time.time() + request.keep_alive

    def running(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "expires_at": expiry, "context_length": self.context_length}
            for name, expiry in sorted(self._expiry.items())
        ]

    async def reap(self) -> None:
        now = time.time()
        for name in [n for n, e in self._expiry.items() if e <= now]:
            del self._expiry[name]

    def close(self) -> None:
        self._expiry.clear()
