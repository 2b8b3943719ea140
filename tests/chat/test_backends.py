"""Chat models chosen by config: the local provider on the tiny model, Ollama against the test double."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_ollama import ChatOllama, OllamaEmbeddings
from ollama import ResponseError

from tasks.chat.backends import BACKENDS, ChatModelOptions, make_chat_model
from tasks.chat.backends.local_model import LocalChatModel, cached_chat_model
from tasks.chat.generation import generate_reply
from tasks.chat.loading import ModelLoadError
from tasks.chat.sampling import SamplingSettings
from tasks.core.config import ConfigError, describe_options, load_config
from tasks.core.defaults import ollama_base_url
from tests.doubles.ollama_server import OllamaServer

PROMPT = ChatPromptTemplate.from_messages([("system", "Answer in one short sentence."), ("human", "{question}")])


# --- options ----------------------------------------------------------------------------------


def test_options_are_checked_with_the_key_named():
    with pytest.raises(ConfigError, match="provider"):
        load_config(ChatModelOptions, None, ["provider=vllm"])
    with pytest.raises(ConfigError, match="llm.adapter"):
        ChatModelOptions(provider="ollama", model="llama3.1", adapter="file:///some/adapter")
    with pytest.raises(ConfigError, match="llm.max_new_tokens"):
        ChatModelOptions(max_new_tokens=0)
    with pytest.raises(ConfigError, match="llm.temperature"):
        ChatModelOptions(temperature=-1)


def test_the_registry_is_the_one_list_of_providers():
    assert list(BACKENDS) == ["local", "ollama", "openai"]
    described = {key: (kind, text) for key, kind, text in describe_options(ChatModelOptions)}
    assert described["provider"] == (
        "'local' | 'ollama' | 'openai'",
        "where answers are generated: local (transformers, in this process) or ollama (a server) "
        "or openai (an OpenAI-compatible server: llama.cpp, vLLM, Ollama /v1)",
    )
    assert described["model"][1] == (
        "local: a model name (Hub id, folder, pypi:PACKAGE/FILE.gguf); ollama: a model the server has pulled, "
        "e.g. llama3.1; openai: the server's model name (llama.cpp: its alias; vLLM: a served model or LoRA name)"
    )
    assert [name for name, backend in BACKENDS.items() if backend.loads_adapters] == ["local"]
    for provider, backend in BACKENDS.items():
        url = ["base_url=http://127.0.0.1:8080/v1"] if backend.needs_base_url else []
        assert load_config(ChatModelOptions, None, [f"provider={provider}", *url]).provider == provider


def test_options_share_the_sampling_bounds():
    with pytest.raises(ConfigError, match=r"^llm\.temperature: must be in \[0, 2\], got 2\.5"):
        ChatModelOptions(temperature=2.5)
    with pytest.raises(ConfigError, match=r"^llm\.max_new_tokens: must be in \[1, 2048\], got 4096"):
        ChatModelOptions(max_new_tokens=4096)
    assert ChatModelOptions(temperature=2.0, max_new_tokens=2048).max_new_tokens == 2048


def test_ollama_base_url_comes_from_config_then_ollama_host(monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert ollama_base_url() == "http://127.0.0.1:11434"
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:12345")  # Ollama's own form: no scheme
    assert ollama_base_url() == "http://127.0.0.1:12345"
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0")  # no port: Ollama's 11434
    assert ollama_base_url() == "http://0.0.0.0:11434"
    monkeypatch.setenv("OLLAMA_HOST", "[::1]")
    assert ollama_base_url() == "http://[::1]:11434"
    assert ollama_base_url("http://10.0.0.5:8080/") == "http://10.0.0.5:8080"


# --- local --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_options(tiny_model_dir) -> ChatModelOptions:
    return ChatModelOptions(provider="local", model=str(tiny_model_dir), temperature=0.0, max_new_tokens=12)


def test_local_model_answers_a_prompt_chain_with_the_generation_core(local_options):
    model = make_chat_model(local_options)
    assert isinstance(model, LocalChatModel)
    answer = (PROMPT | model).invoke({"question": "What is your favorite book?"})
    assert isinstance(answer, AIMessage) and answer.content
    # The same reply as the generation core gives for the same chat: the system message got through.
    loaded = cached_chat_model(local_options.model)
    expected = generate_reply(
        loaded,
        [
            {"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": "What is your favorite book?"},
        ],
        SamplingSettings(temperature=0.0, max_new_tokens=12),
    )
    assert answer.content == expected
    assert answer.response_metadata["model_name"] == local_options.model
    assert 0 < answer.usage_metadata["output_tokens"] <= 12 + 2  # re-encoding may merge or split a token
    assert answer.usage_metadata["input_tokens"] > 10


def test_local_model_streams_the_same_reply(local_options):
    chain = PROMPT | make_chat_model(local_options) | StrOutputParser()
    pieces = list(chain.stream({"question": "Tell me about computers."}))
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == chain.invoke({"question": "Tell me about computers."})


def test_local_model_is_loaded_once_per_process(local_options):
    first = make_chat_model(local_options)
    first.invoke("hi")
    second = make_chat_model(local_options)
    second.invoke("hello")
    assert cached_chat_model(local_options.model) is cached_chat_model(local_options.model)
    assert not cached_chat_model(local_options.model).lock.locked()


def test_local_model_cuts_the_reply_at_a_stop_string(local_options):
    model = make_chat_model(ChatModelOptions(model=local_options.model, temperature=0.0, max_new_tokens=40))
    full = model.invoke("What is your favorite book?").content
    assert len(full) > 6
    stop = full[3:6]  # a piece from inside the reply
    cut = model.invoke("What is your favorite book?", stop=[stop]).content
    assert cut == full[: full.index(stop)]
    streamed = "".join(c.content for c in model.stream("What is your favorite book?", stop=[stop]))
    assert streamed == cut


def test_local_model_with_a_bad_name_fails_clearly_on_first_use():
    model = make_chat_model(ChatModelOptions(model="/no/such/model"))
    with pytest.raises(ModelLoadError, match="cannot load model '/no/such/model'"):
        model.invoke("hi")


# --- ollama ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ollama_options(ollama_server) -> ChatModelOptions:
    return ChatModelOptions(
        provider="ollama", model=OllamaServer.CHAT_MODEL, base_url=ollama_server.url, temperature=0.0, max_new_tokens=16
    )


def test_ollama_chat_model_invokes_the_server(ollama_options):
    model = make_chat_model(ollama_options)
    assert isinstance(model, ChatOllama)
    answer = (PROMPT | model).invoke({"question": "What is the capital of France?"})
    assert answer.content.strip()
    assert answer.response_metadata["model_name"] == OllamaServer.CHAT_MODEL
    assert answer.response_metadata["done_reason"] in ("stop", "length")
    assert 0 < answer.usage_metadata["output_tokens"] <= 16  # num_predict reached the server
    assert answer.usage_metadata["input_tokens"] > 10


def test_ollama_chat_model_streams_the_same_greedy_reply(ollama_options):
    chain = PROMPT | make_chat_model(ollama_options)
    chunks = list(chain.stream({"question": "Name three colors."}))
    text = "".join(chunk.content for chunk in chunks)
    assert len([c for c in chunks if c.content]) > 2
    reasons = [c.response_metadata["done_reason"] for c in chunks if "done_reason" in c.response_metadata]
    assert reasons in (["stop"], ["length"])  # from the final NDJSON line only
    assert text == chain.invoke({"question": "Name three colors."}).content


def test_ollama_host_is_used_when_no_url_is_configured(ollama_server, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.url.removeprefix("http://"))
    model = make_chat_model(ChatModelOptions(provider="ollama", model="smollm2:135m", max_new_tokens=4))
    assert model.invoke("hi").content


def test_ollama_unknown_model_gets_ollamas_not_found(ollama_options):
    model = make_chat_model(ChatModelOptions(provider="ollama", model="llama3.1", base_url=ollama_options.base_url))
    with pytest.raises(ResponseError, match='model "llama3.1" not found') as caught:
        model.invoke("hi")
    assert caught.value.status_code == 404
    with pytest.raises(ValueError, match="not found in Ollama"):  # langchain-ollama's check via /api/tags
        ChatOllama(model="llama3.1", base_url=ollama_options.base_url, validate_model_on_init=True)


def test_ollama_embeddings_are_consistent_normalised_and_meaningful(ollama_server):
    embeddings = OllamaEmbeddings(model="all-minilm", base_url=ollama_server.url, validate_model_on_init=True)
    texts = ["How do I bake bread?", "A recipe for baking a loaf of bread", "The stock market fell today"]
    vectors = embeddings.embed_documents(texts)
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert embeddings.embed_query(texts[0]) == pytest.approx(vectors[0], abs=1e-5)
    assert all(abs(sum(x * x for x in v) - 1.0) < 1e-4 for v in vectors)

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
