"""Two chat app replicas behind HAProxy, one browser: the conversation lives in the browser, so either replica serves it.

Two separate apps (each its own ChatService, sessions and model pool) run at the same time, sharing
only `server.state_secret_env`; HAProxy runs from the shipped deployments/proxy/haproxy.cfg in
front of them and keeps a browser on one replica with its SERVERID cookie. The browser talks to
the replica the proxy picked; that replica is taken out of rotation through the proxy's runtime
API; after the reload the proxy sends the browser to the other replica, the history is back and
the reply is made with every earlier turn in its prompt. Then the replica serving the browser is
stopped: the proxy fails over, and after a reload the page keeps going on the first one. Without the shared key, the second
replica cannot read what the first stored and the user starts over.
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
from tests.support.proxy import COOKIE, haproxy

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


def generations(service: ChatService) -> list[dict]:
    """Every reply this replica made (its own per-session logs; another replica's never show here)."""
    return [entry for log in service.sessions._sessions.values() for entry in log.generations]


def sticky_replica(context) -> str:
    (value,) = [cookie["value"] for cookie in context.cookies() if cookie["name"] == COOKIE]
    return value


def turn(page, text: str, count: int) -> None:
    """Send a message and wait for its reply and for the browser to hold the saved conversation."""
    before = page.evaluate(f"() => localStorage.getItem({STORED_KEY!r})")
    send(page, text)
    wait_for_bot_count(page, count)
    # The save after the reply is its own event: wait until the browser holds the new conversation.
    page.wait_for_function(f"() => localStorage.getItem({STORED_KEY!r}) !== {json.dumps(before)}")


@pytest.fixture()
def two_replicas(chat_model_dir):
    """Start two replicas at once (after the test has set or removed the shared key); closes them after."""
    apps = []

    def start() -> dict[str, tuple[int, object, ChatService]]:
        replicas = {}
        for name in ("a", "b"):
            port = free_port()
            app, service = replica(port, str(chat_model_dir))
            apps.append(app)
            replicas[name] = (port, app, service)
        return replicas

    yield start
    for app in apps:
        app.close()


def open_through(browser, proxy):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(proxy.url)
    page.wait_for_selector("#message textarea")
    return context, page


def wait_for_user_count(page, count: int) -> None:
    page.wait_for_function(
        f"() => document.querySelectorAll('#chat-a [data-testid=\"user\"]').length == {count}", timeout=2 * TIMEOUT_MS
    )


def test_behind_the_proxy_either_replica_serves_the_conversation(browser, two_replicas, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("FTLLM_CHAT_STATE_SECRET", "replica-test-key-0123456789")
    replicas = two_replicas()
    with haproxy({name: port for name, (port, _, _) in replicas.items()}, tmp_path) as proxy:
        proxy.wait_until({"a": "UP", "b": "UP"})
        context, page = open_through(browser, proxy)
        try:
            first = sticky_replica(context)
            (second,) = set(replicas) - {first}
            service_first, service_second = replicas[first][2], replicas[second][2]

            turn(page, "first message", 1)
            turn(page, "second message", 2)
            seen = (user_texts(page), bot_texts(page))
            assert seen[0] == ["first message", "second message"]
            on_first = generations(service_first)
            assert [e["status"] for e in on_first] == ["done", "done"]
            assert generations(service_second) == []  # the proxy kept every request of the page on one replica

            # The operator takes the first replica out of rotation; the browser's next load moves.
            proxy.set_state(first, "maint")
            proxy.wait_until({first: "MAINT"})
            page.reload()
            page.wait_for_selector("#message textarea")
            assert sticky_replica(context) == second  # the proxy re-pinned the browser
            wait_for_user_count(page, 2)
            assert (user_texts(page), bot_texts(page)) == seen
            turn(page, "third message", 3)
            assert user_texts(page) == ["first message", "second message", "third message"]
            (on_second,) = generations(service_second)
            assert on_second["status"] == "done"
            # The second replica answered with the whole conversation in its prompt, not just the last message.
            assert on_second["prompt_tokens"] > max(e["prompt_tokens"] for e in on_first)

            # The first replica is back in rotation; the one serving the browser now dies.
            proxy.set_state(first, "ready")
            proxy.wait_until({first: "UP"})
            known = set(service_first.sessions._sessions)  # the page's earlier session there may be forgotten any time
            replicas[second][1].close()
            # Gradio's page reloads itself when a reply's connection breaks ("Connection Lost", then it
            # polls /gradio_api/app_id and reloads once the address answers); a message sent meanwhile
            # can be lost to that reload, so the test reloads as the page would. The dead replica
            # refuses the connection and the proxy sends the page to the live one.
            page.reload()
            page.wait_for_selector("#message textarea")
            wait_for_user_count(page, 3)
            assert sticky_replica(context) == first
            turn(page, "fourth message", 4)
            assert user_texts(page) == ["first message", "second message", "third message", "fourth message"]
            after = [
                e for key, log in service_first.sessions._sessions.items() if key not in known for e in log.generations
            ]
            assert [e["status"] for e in after] == ["done"]
            assert after[0]["prompt_tokens"] > on_second["prompt_tokens"]
        finally:
            context.close()


def test_without_the_shared_key_the_other_replica_starts_empty(browser, two_replicas, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.delenv("FTLLM_CHAT_STATE_SECRET", raising=False)
    replicas = two_replicas()
    with haproxy({name: port for name, (port, _, _) in replicas.items()}, tmp_path) as proxy:
        proxy.wait_until({"a": "UP", "b": "UP"})
        context, page = open_through(browser, proxy)
        try:
            first = sticky_replica(context)
            turn(page, "first message", 1)
            proxy.set_state(first, "maint")
            proxy.wait_until({first: "MAINT"})
            page.reload()
            page.wait_for_selector("#message textarea")
            assert sticky_replica(context) != first
            page.wait_for_timeout(1500)
            assert user_texts(page) == []  # the other replica cannot read what the first stored: the user starts over
        finally:
            context.close()
