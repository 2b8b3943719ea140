"""Two chat app replicas, one browser: the conversation lives in the browser, so either replica serves it.

Replica A and replica B are two separate apps (each its own ChatService, sessions and model pool)
sharing only `server.state_secret_env`. They take turns at one address, as behind a proxy that
fails over: the browser talks to A, A goes away, B answers at the same address; after the reload
the history is back and B's reply is made with every earlier turn in its prompt. Without the
shared key, B cannot read A's stored conversation and starts empty.
"""

from __future__ import annotations

import json

import pytest

from tasks.chat.config import ChatAppConfig, ServerOptions
from tasks.chat.history import STORED_KEY
from tasks.chat.sampling import SamplingSettings
from tasks.chat.server import launch
from tasks.chat.service import ChatService
from tasks.chat.ui import build_app
from tests.chat.test_chat_browser import TIMEOUT_MS, bot_texts, browser, send, wait_for_bot_count  # noqa: F401
from tests.support.chat import free_port

pytestmark = pytest.mark.slow


def replica(port: int, model: str):
    config = ChatAppConfig(
        server=ServerOptions(port=port, concurrency_limit=2),
        models=[model],
        list_registry=False,
        preload=False,
        sampling=SamplingSettings(temperature=0.0, max_new_tokens=8),
    )
    service = ChatService(config)
    app = build_app(config, service)
    launch(app, config)
    return app, service


def user_texts(page) -> list[str]:
    return page.locator('#chat-a [data-testid="user"]').all_inner_texts()


def prompt_tokens(service: ChatService) -> list[int]:
    return [entry["prompt_tokens"] for log in service.sessions._sessions.values() for entry in log.generations]


@pytest.mark.parametrize("shared_key", [True, False], ids=["shared-key", "no-shared-key"])
def test_a_second_replica_keeps_the_conversation(browser, chat_model_dir, monkeypatch, shared_key):  # noqa: F811
    if shared_key:
        monkeypatch.setenv("FTLLM_CHAT_STATE_SECRET", "replica-test-key-0123456789")
    else:
        monkeypatch.delenv("FTLLM_CHAT_STATE_SECRET", raising=False)
    port = free_port()
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)

    app_a, service_a = replica(port, str(chat_model_dir))
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_selector("#message textarea")
    for turn, text in enumerate(["first message", "second message"], start=1):
        before = page.evaluate(f"() => localStorage.getItem({STORED_KEY!r})")
        send(page, text)
        wait_for_bot_count(page, turn)
        # The save after the reply is its own event: wait until the browser holds the new conversation.
        page.wait_for_function(f"() => localStorage.getItem({STORED_KEY!r}) !== {json.dumps(before)}")
    seen_on_a = (user_texts(page), bot_texts(page))
    assert seen_on_a[0] == ["first message", "second message"]
    tokens_on_a = prompt_tokens(service_a)
    assert len(tokens_on_a) == 2
    app_a.close()  # replica A goes away

    app_b, service_b = replica(port, str(chat_model_dir))
    try:
        page.reload()
        page.wait_for_selector("#message textarea")
        if not shared_key:
            page.wait_for_timeout(1500)
            assert user_texts(page) == []  # B cannot read what A stored: the user starts over
            return
        page.wait_for_function(
            "() => document.querySelectorAll('#chat-a [data-testid=\"user\"]').length == 2", timeout=2 * TIMEOUT_MS
        )
        assert (user_texts(page), bot_texts(page)) == seen_on_a
        send(page, "third message")
        wait_for_bot_count(page, 3)
        assert user_texts(page) == ["first message", "second message", "third message"]
        # B answered with the whole conversation in its prompt, not just the last message.
        (entry,) = [e for log in service_b.sessions._sessions.values() for e in log.generations]
        assert entry["status"] == "done"
        assert entry["prompt_tokens"] > max(tokens_on_a)
    finally:
        app_b.close()
        context.close()
