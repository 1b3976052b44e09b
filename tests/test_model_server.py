"""The embedded model server through the official ollama client, over HTTP, on its extractive
engine (exact answers); tests/test_llama_engine.py runs the real LLM behind the same server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import ollama
import pytest

from aistack.steps.model_server import BUSY, EmbeddedModelServer, Faults
from aistack.steps.roles import StageSettings, role

CONTEXT = (
    "Python is a programming language. It was created by Guido van Rossum in 1991. "
    "Its design emphasises readability. The sky over Amsterdam is often grey."
)


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedModelServer]:
    with EmbeddedModelServer(models=["llama3"], stand_in_engine="extractive", parallel=2) as s:
        yield s


def test_list_show_version_ps_pull_and_head(server: EmbeddedModelServer) -> None:
    client = ollama.Client(host=server.url)
    listing = {m.model: m for m in client.list().models}
    assert sorted(listing) == ["aistack-extractive:latest", "llama3:latest", "smollm2:135m"]
    assert all(m.digest and len(m.digest) == 64 for m in listing.values())
    # a stand-in reports the digest of what really answers, never a digest of its own
    assert listing["llama3:latest"].digest == listing["aistack-extractive:latest"].digest
    show = client.show("llama3")
    assert show.modelinfo["aistack-extractive.context_length"] == 8192
    assert show.modelinfo["aistack.stand_in"] is True
    assert show.modelinfo["aistack.served_by"] == "aistack-extractive:latest"
    assert show.modelinfo["aistack.engine"].startswith("aistack-extractive ")
    assert "not a language model" in (show.modelfile or "") and "STAND-IN" in (show.modelfile or "")
    assert client.show("aistack-extractive").modelinfo["aistack.stand_in"] is False
    assert [p.status for p in client.pull("llama3", stream=True)][-1] == "success"
    with pytest.raises(ollama.ResponseError) as err:
        list(client.pull("nope", stream=True))
    assert err.value.status_code == -1 and "file does not exist" in err.value.error
    assert httpx.head(server.url + "/").status_code == 200
    assert httpx.get(server.url + "/api/version").json()["version"].endswith("aistack-embedded")
    client.chat(model="llama3", messages=[{"role": "user", "content": "### Context\nhello."}])
    assert [m.model for m in client.ps().models] == ["llama3:latest"]


def test_chat_generate_and_stream(server: EmbeddedModelServer) -> None:
    client = ollama.Client(host=server.url)
    qna = role("qna")
    msgs = qna.messages(CONTEXT, StageSettings(question="Who created Python?"))
    reply = client.chat(model="llama3", messages=msgs, options={"temperature": 0.2, "num_ctx": 8192})
    assert "Guido van Rossum" in reply.message.content
    assert (
        reply.done and reply.done_reason == "stop" and reply.prompt_eval_count > 20 and reply.eval_count > 5
    )
    assert reply.total_duration > 0 and reply.created_at
    parts = list(client.chat(model="llama3", messages=msgs, stream=True))
    assert len(parts) > 3 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == reply.message.content
    refusal = client.chat(
        model="llama3",
        messages=qna.messages(CONTEXT, StageSettings(question="What is the capital of France?")),
    )
    assert refusal.message.content == "The context does not contain the answer."
    gen = client.generate(model="aistack-extractive", prompt="### Context\n" + CONTEXT)
    assert gen.response and gen.done
    assert (
        "".join(p.response for p in client.generate(model="llama3", prompt=CONTEXT, stream=True))
        == client.generate(model="llama3", prompt=CONTEXT).response
    )
    short = client.generate(model="llama3", prompt=CONTEXT, options={"num_predict": 3})
    assert short.done_reason == "length" and short.eval_count == 3


def test_format_schema_is_always_honoured(server: EmbeddedModelServer) -> None:
    client = ollama.Client(host=server.url)
    classifier = role("classifier")
    settings = StageSettings(labels=("weather", "programming"))
    reply = client.chat(
        model="llama3",
        messages=classifier.messages(CONTEXT, settings),
        format=classifier.output_schema(settings),
    )
    value, problem = classifier.check(reply.message.content, settings)
    assert problem is None and value["label"] == "programming"
    schema = {
        "type": "object",
        "properties": {
            "year": {"type": "integer"},
            "creator": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["year", "creator", "tags"],
    }
    extractor = role("extractor")
    got = client.generate(model="llama3", prompt="### Context\n" + CONTEXT, format=schema).response
    value, problem = extractor.check(got, StageSettings(output_schema=schema))
    assert problem is None and value["year"] == 1991


def test_embed_is_deterministic(server: EmbeddedModelServer) -> None:
    client = ollama.Client(host=server.url)
    a = client.embed(model="llama3", input=["alpha", "beta"]).embeddings
    assert len(a) == 2 and len(a[0]) == 64 and a != [a[0], a[0]]
    assert client.embed(model="llama3", input="alpha").embeddings[0] == a[0]


def test_errors_have_ollama_shapes(server: EmbeddedModelServer) -> None:
    client = ollama.Client(host=server.url)
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="mistral", messages=[{"role": "user", "content": "hi"}])
    assert (
        err.value.status_code == 404 and err.value.error == 'model "mistral" not found, try pulling it first'
    )
    bad = httpx.post(server.url + "/api/chat", content=b"")
    assert bad.status_code == 400 and bad.json() == {"error": "missing request body"}
    assert httpx.post(server.url + "/api/chat", json={"messages": []}).json() == {
        "error": "model is required"
    }
    fmt = httpx.post(
        server.url + "/api/generate", json={"model": "llama3", "prompt": "x", "format": 7, "stream": False}
    )
    assert fmt.status_code == 400 and "invalid format" in fmt.json()["error"]


def test_queue_full_answers_503() -> None:
    with EmbeddedModelServer(max_queue=0) as full:
        with pytest.raises(ollama.ResponseError) as err:
            ollama.Client(host=full.url).chat(
                model="aistack-extractive", messages=[{"role": "user", "content": "x"}]
            )
        assert err.value.status_code == 503 and err.value.error == BUSY


def test_faults_parse() -> None:
    assert Faults.parse("latency=0.1,error_rate=0.2,seed=3") == Faults(latency=0.1, error_rate=0.2, seed=3)
    with pytest.raises(ValueError, match="unknown fault 'explode'"):
        Faults.parse("explode=1")
    with pytest.raises(ValueError, match=r"error_rate=2\.0 must be a probability between 0 and 1"):
        Faults.parse("error_rate=2")
    with pytest.raises(ValueError, match="latency=nan must be a finite number"):
        Faults.parse("latency=nan")
    with pytest.raises(ValueError, match="fault seed='x' is not a number"):
        Faults.parse("seed=x")
