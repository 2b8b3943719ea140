"""The OpenAI-compatible backend against llama.cpp's real server (xllamacpp) serving SmolLM2.

Chat models made by config stream from it; a stream closed early ends the request on the server;
the API key comes from a Prefect Secret; in the chat app a down endpoint is named in the chat while
the other choices keep answering.
"""

from __future__ import annotations

import re
import time
import uuid

import httpx
import openai
import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from tasks.chat.backends import BACKENDS, ChatModelOptions, make_chat_model
from tasks.chat.choices import Endpoint, endpoint_of, model_choices
from tasks.chat.config import ChatAppConfig, ServerOptions
from tasks.chat.history import ERROR_TITLE
from tasks.chat.sampling import SamplingSettings
from tasks.chat.service import ChatService
from tasks.core.config import ConfigError, load_config
from tasks.core.secrets import SecretError
from tests.support.chat import free_port

pytestmark = pytest.mark.slow  # a real llama.cpp server, shared by the session

SYSTEM = "Answer in one short sentence."
PROMPT = ChatPromptTemplate.from_messages([("system", "Answer in one short sentence."), ("human", "{question}")])


def options(server, **overrides) -> ChatModelOptions:
    values = {"provider": "openai", "model": server.alias, "base_url": server.base_url, "temperature": 0.0}
    return ChatModelOptions(**{**values, **overrides})


def metric(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    return float(re.search(rf"^llamacpp:{name} (\S+)$", text, re.MULTILINE).group(1))


def test_the_provider_is_registered_and_needs_a_server_url():
    assert "openai" in BACKENDS
    with pytest.raises(ConfigError, match=r"^llm\.base_url: the openai provider needs the server's http\(s\) URL"):
        ChatModelOptions(provider="openai", model="smollm2")
    with pytest.raises(ConfigError, match="llm.adapter"):
        ChatModelOptions(provider="openai", model="m", base_url="http://h/v1", adapter="file:///an/adapter")
    loaded = load_config(ChatModelOptions, None, ["provider=openai", "base_url=http://127.0.0.1:8080/v1"])
    assert loaded.base_url == "http://127.0.0.1:8080/v1" and loaded.api_key_secret is None


def test_chains_invoke_and_stream_from_llamacpp(llamacpp_server):
    model = make_chat_model(options(llamacpp_server, max_new_tokens=24))
    answer = (PROMPT | model | StrOutputParser()).invoke({"question": "What is the capital of France?"})
    assert "Paris" in answer
    chunks = [c.text for c in model.stream([("user", "Count from one to ten in words.")]) if c.text]
    assert len(chunks) > 3 and re.search(r"3|three", "".join(chunks).lower())
    # Greedy is deterministic: the same question streamed and invoked gives the same text.
    again = model.invoke([("system", "Answer in one short sentence."), ("user", "What is the capital of France?")])
    assert again.text == answer and again.usage_metadata["output_tokens"] > 0


def test_closing_a_stream_ends_the_request_on_the_server(llamacpp_server):
    predicted_before = metric(llamacpp_server, "tokens_predicted_total")
    model = make_chat_model(options(llamacpp_server, max_new_tokens=2000, temperature=1.0))
    stream = model.stream([("user", "Write a very long story about a dragon and a knight.")])
    received = [next(stream).text for _ in range(5)]
    assert any(received)
    assert metric(llamacpp_server, "requests_processing") == 1
    stream.close()  # what the chat app does on Stop
    deadline = time.monotonic() + 10
    while metric(llamacpp_server, "requests_processing") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(llamacpp_server, "requests_processing") == 0
    time.sleep(0.5)
    # Ended within a few tokens of the close, far from the 2,000 asked for.
    assert metric(llamacpp_server, "tokens_predicted_total") - predicted_before < 200


def test_chat_models_for_one_server_share_its_clients_and_turns_back_to_back_never_fail(llamacpp_server):
    from tasks.chat.backends.openai import http_clients

    sync_client, _ = http_clients(llamacpp_server.base_url)
    for _ in range(6):  # the chat app makes a chat model per turn, and a user may send the next at once
        model = make_chat_model(options(llamacpp_server, max_new_tokens=4))
        assert model.root_client._client is sync_client  # no client of its own to build before the request
        assert "".join(chunk.text for chunk in model.stream([("user", "Say hello.")]))
    # No connection is kept that llama.cpp closes after a streamed reply: the next turn opens its own.
    assert sync_client._transport._pool.connections == []


def test_the_server_was_warmed_up_and_a_returning_conversation_reuses_its_cached_prompt(llamacpp_server):
    assert llamacpp_server.warm_up_seconds > 0

    def usage(messages: list[dict]) -> tuple[dict, str]:
        body = {"model": llamacpp_server.alias, "messages": messages, "max_tokens": 8, "temperature": 0.0}
        answer = httpx.post(f"{llamacpp_server.base_url}/chat/completions", json=body, timeout=120).json()
        return answer["usage"], answer["choices"][0]["message"]["content"]

    first = [{"role": "user", "content": f"Name a colour. ({uuid.uuid4().hex})"}]
    used, reply = usage(first)
    # A new conversation: at least the chat template's default system prompt was cached.
    assert used["prompt_tokens_details"]["cached_tokens"] > 0
    again, _ = usage([*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "Another one."}])
    # Its next turn: the whole first prompt comes from the slot's cache; only the new turn is computed.
    assert again["prompt_tokens_details"]["cached_tokens"] >= used["prompt_tokens"]


def test_the_api_key_comes_from_a_prefect_secret(prefect_harness):
    from prefect.blocks.system import Secret

    from tasks.core.defaults import SMOLLM2_PYPI
    from tasks.core.llamacpp import start_llama_server
    from tasks.core.models import gguf_file

    key = f"sk-test-{uuid.uuid4().hex}"
    keyed, url = start_llama_server(gguf_file(SMOLLM2_PYPI), context=1024, api_keys=[key])
    base_url = f"{url}/v1"
    Secret(value=key).save("llamacpp-key", overwrite=True)
    question = [("user", "Say hello.")]
    with pytest.raises(openai.AuthenticationError):
        make_chat_model(ChatModelOptions(provider="openai", model="m", base_url=base_url, max_new_tokens=4)).invoke(
            question
        )
    keyed_options = ChatModelOptions(
        provider="openai", model="m", base_url=base_url, api_key_secret="llamacpp-key", max_new_tokens=4
    )
    assert make_chat_model(keyed_options).invoke(question).text
    with pytest.raises(SecretError, match=r"^llm\.api_key_secret: no Prefect Secret block named 'no-such-key'"):
        make_chat_model(ChatModelOptions(provider="openai", model="m", base_url=base_url, api_key_secret="no-such-key"))
    del keyed


def test_the_chat_app_streams_from_the_server_and_names_a_down_one(llamacpp_server, chat_model_dir):
    served = Endpoint(llamacpp_server.alias, llamacpp_server.base_url)
    down = Endpoint("smollm2", f"http://127.0.0.1:{free_port()}/v1")
    config = ChatAppConfig(
        server=ServerOptions(stream_interval_s=0),  # every token its own update, to see the stream
        models=[str(chat_model_dir)],
        endpoints=[served.choice, down.choice],
        list_registry=False,
    )
    assert model_choices(config) == [served.choice, down.choice, str(chat_model_dir)]
    assert endpoint_of(served.choice) == served and endpoint_of(str(chat_model_dir)) is None
    service = ChatService(config)
    settings = SamplingSettings(temperature=0.0, max_new_tokens=16)

    def last(choice: str) -> tuple[list[dict], str, int]:
        updates = list(service.reply("What is the capital of France?", [], choice, SYSTEM, settings, "s1"))
        return updates[-1][0], updates[-1][1], len(updates)

    history, notice, updates = last(down.choice)
    assert history[-1]["metadata"]["title"] == ERROR_TITLE and down.base_url in history[-1]["content"]
    assert down.base_url in notice and "the others still work" in notice
    history, notice, updates = last(served.choice)
    assert "Paris" in history[-1]["content"] and notice == "" and updates > 3  # streamed, token by token
    history, _, _ = last(str(chat_model_dir))  # the in-process fallback still answers
    assert history[-1]["role"] == "assistant" and history[-1]["content"]
    statuses = [(entry["model"], entry["status"]) for entry in service.sessions.log("s1")]
    assert statuses == [(down.choice, "unreachable"), (served.choice, "done"), (str(chat_model_dir), "done")]


def test_endpoints_must_be_model_at_url():
    with pytest.raises(ConfigError, match=r"^endpoints\[0\]: expected MODEL@URL"):
        ChatAppConfig(endpoints=["http://127.0.0.1:8080/v1"])
