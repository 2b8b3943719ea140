"""The Ollama test double speaks the protocol as the `ollama` client and raw HTTP see it."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime

import httpx
import ollama
import pytest
from langchain_ollama import OllamaLLM

from tests.doubles.ollama_server import OllamaServer

CHAT = OllamaServer.CHAT_MODEL
EMBED = OllamaServer.EMBED_MODEL
HI = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def http(ollama_server):
    with httpx.Client(base_url=ollama_server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def client(ollama_server):
    return ollama.Client(host=ollama_server.url)


def test_it_listens_on_localhost_only(ollama_server):
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", ollama_server.url)


def test_streamed_chat_is_ndjson_ending_with_the_stats_line(http):
    lines = []
    with http.stream(
        "POST", "/api/chat", json={"model": CHAT, "messages": HI, "options": {"temperature": 0, "num_predict": 12}}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    *parts, final = lines
    assert len(parts) > 2
    for part in parts:
        assert part["model"] == CHAT and part["done"] is False
        assert part["message"]["role"] == "assistant" and part["message"]["content"]
        datetime.fromisoformat(part["created_at"])
    assert final["done"] is True and final["message"] == {"role": "assistant", "content": ""}
    assert final["done_reason"] == "length" and final["eval_count"] == 12
    assert final["prompt_eval_count"] > 5
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int)
    assert final["total_duration"] >= final["eval_duration"] > 0
    # Not streamed: one object, the same greedy text.
    single = http.post(
        "/api/chat",
        json={"model": CHAT, "messages": HI, "stream": False, "options": {"temperature": 0, "num_predict": 12}},
    ).json()
    assert single["message"]["content"] == "".join(p["message"]["content"] for p in parts)
    assert single["done"] is True and single["eval_count"] == 12


def test_the_ollama_client_parses_chat_and_generate(client, ollama_server):
    reply = client.chat(model="smollm2:135m", messages=HI, options={"temperature": 0, "num_predict": 40})
    assert reply.message.content and reply.done and reply.done_reason in ("stop", "length")
    assert reply.eval_count <= 40
    streamed = "".join(
        part.message.content
        for part in client.chat(model=CHAT, messages=HI, stream=True, options={"temperature": 0, "num_predict": 40})
    )
    assert streamed == reply.message.content
    generated = client.generate(model=CHAT, prompt="Name three colors.", options={"temperature": 0, "num_predict": 40})
    assert generated.response == reply.message.content  # the same chat template on the same prompt
    llm = OllamaLLM(model=CHAT, base_url=ollama_server.url, temperature=0, num_predict=40)
    assert llm.invoke("Name three colors.") == reply.message.content


def test_stop_strings_and_json_format_reach_llama_cpp(client):
    reply = client.chat(
        model=CHAT,
        messages=[{"role": "user", "content": "Count from one to ten in words."}],
        options={"temperature": 0, "num_predict": 60},
    )
    text = reply.message.content
    assert len(text) > 10
    stop = text[5:9]
    cut = client.chat(
        model=CHAT,
        messages=[{"role": "user", "content": "Count from one to ten in words."}],
        options={"temperature": 0, "num_predict": 60, "stop": [stop]},
    )
    assert cut.message.content == text[: text.index(stop)] and cut.done_reason == "stop"
    schema = {
        "type": "object",
        "properties": {"color": {"type": "string", "maxLength": 12}},
        "required": ["color"],
        "additionalProperties": False,
    }
    shaped = client.chat(
        model=CHAT,
        messages=[{"role": "user", "content": "Give a color as JSON."}],
        format=schema,
        options={"temperature": 0, "num_predict": 40},
    )
    assert shaped.done_reason == "stop"
    assert set(json.loads(shaped.message.content)) == {"color"}


def test_an_empty_chat_just_loads_the_model(client):
    reply = client.chat(model=CHAT, messages=[])
    assert reply.done and reply.done_reason == "load" and reply.message.content == ""


def test_model_listing_show_ps_and_version(client, http):
    names = {m.model: m for m in client.list().models}
    assert set(names) == {CHAT, EMBED}
    assert re.fullmatch(r"[0-9a-f]{64}", names[CHAT].digest) and names[CHAT].size > 50_000_000
    assert names[CHAT].details.format == "gguf" and names[CHAT].details.quantization_level == "Q4_1"
    shown = client.show("smollm2:135m")
    assert shown.capabilities == ["completion"] and shown.modelinfo["general.architecture"] == "llama"
    assert client.show("all-minilm").capabilities == ["embedding"]
    assert CHAT in {m.model for m in client.ps().models}
    assert http.get("/api/version").json()["version"]
    assert http.get("/").text == "Ollama is running"
    assert http.head("/").status_code == 200


def test_errors_carry_ollamas_status_and_message(client, http):
    with pytest.raises(ollama.ResponseError, match='model "llama3.1" not found') as caught:
        list(client.chat(model="llama3.1", messages=HI, stream=True))  # before the stream starts
    assert caught.value.status_code == 404
    with pytest.raises(ollama.ResponseError, match="does not support tools") as caught:
        client.chat(
            model=CHAT,
            messages=HI,
            tools=[
                {
                    "type": "function",
                    "function": {
                        "name": "add",
                        "description": "add",
                        "parameters": {"type": "object", "properties": {}},
                    },
                }
            ],
        )
    assert caught.value.status_code == 400
    with pytest.raises(ollama.ResponseError, match="does not support embeddings"):
        client.embed(model=CHAT, input="hi")
    with pytest.raises(ollama.ResponseError, match="does not support generate"):
        client.chat(model=EMBED, messages=HI)
    bad = http.post("/api/chat", content=b"{not json")
    assert bad.status_code == 400 and "invalid JSON" in bad.json()["error"]
    assert http.post("/api/chat", json={"model": CHAT, "messages": [{"role": "robot"}]}).status_code == 400
    assert http.get("/api/nothing-here").status_code == 404


def test_a_client_that_goes_away_stops_the_generation(http):
    with http.stream(
        "POST",
        "/api/chat",
        json={
            "model": CHAT,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
            "options": {"num_predict": 3000, "temperature": 1.0},
        },
    ) as response:
        for count, _ in enumerate(response.iter_lines()):
            if count == 3:
                break  # closes the connection
    # One slot: had the long story gone on, this request would wait for ~3,000 tokens (tens of s).
    started = time.monotonic()
    short = http.post(
        "/api/chat", json={"model": CHAT, "messages": HI, "stream": False, "options": {"num_predict": 4}}
    ).json()
    assert short["eval_count"] == 4
    assert time.monotonic() - started < 10


def test_embed_and_legacy_embeddings(client):
    batch = client.embed(model="all-minilm", input=["bread and butter", "a loaf of bread"])
    assert len(batch.embeddings) == 2 and len(batch.embeddings[0]) == 384
    assert batch.prompt_eval_count > 4
    legacy = client.embeddings(model=EMBED, prompt="bread and butter").embedding
    assert legacy == pytest.approx(batch.embeddings[0], abs=1e-5)
    short = client.embed(model=EMBED, input="bread and butter", dimensions=64).embeddings[0]
    assert len(short) == 64 and abs(sum(x * x for x in short) - 1) < 1e-4
    with pytest.raises(ollama.ResponseError, match="exceeds maximum context length"):
        client.embed(model=EMBED, input="bread " * 600, truncate=False)
    assert len(client.embed(model=EMBED, input="bread " * 600).embeddings[0]) == 384  # truncated
