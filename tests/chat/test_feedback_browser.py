"""Feedback in a real browser: thumbs on a reply, compare-mode picks, a double click, a stopped reply,
Clear my ratings, a locked database; each checked in the judgements table the app writes."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tasks.chat.feedback.store import as_judgement
from tests.chat.test_chat_browser import (  # noqa: F401  (browser: the module's Chromium fixture)
    browser,
    open_app,
    pick_model,
    send,
    set_slider,
    wait_for_bot_count,
    wait_until_idle,
)


@pytest.fixture()
def page(browser, chat_server):  # noqa: F811
    context, page = open_app(browser, chat_server.url)
    yield page
    context.close()


def feedback_message(page, containing: str) -> str:
    page.locator("#feedback-message").filter(has_text=containing).wait_for()
    return page.locator("#feedback-message").inner_text()


def session_rows(chat_server, session: str) -> list[dict]:
    return [r for r in chat_server.app.feedback.store.rows() if r["session"] == session]


def session_of(page, chat_server) -> str:
    """The browser session's hash, as the server knows it (its last generation's session)."""
    sessions = chat_server.service.sessions._sessions  # the server side of this page
    return next(s for s in reversed(list(sessions)) if sessions[s].generations)


def feedback_stats(page, version: str | None = None) -> dict:
    """The per-version statistics panel (inside the generation-log accordion), once it names `version`."""
    if not page.locator("#feedback-stats textarea").is_visible():
        page.locator("#generation-log-box").locator("button").first.click()
    page.locator("#feedback-stats textarea").wait_for(state="visible")  # the accordion renders it on opening
    if version:
        page.wait_for_function(
            f"() => (document.querySelector('#feedback-stats textarea')?.value ?? '').includes({json.dumps(version)})"
        )
    return json.loads(page.locator("#feedback-stats textarea").input_value())


def thumb(page, which: str, chat: str = "#chat-a", nth: int = -1):
    buttons = page.locator(f'{chat} button[aria-label="{which}"], {chat} button[aria-label="{which}d"]')
    return buttons.nth(nth)


def test_thumbs_are_stored_with_the_prompt_and_a_second_click_withdraws(page, chat_server):
    assert "stored" in page.locator("#disclaimer").inner_text()
    page.click("#advanced button")
    set_slider(page, "max-new-tokens", 6)
    send(page, "Rate this one")
    wait_for_bot_count(page, 1)
    reply = wait_until_idle(page, quiet_s=0.5)
    session = session_of(page, chat_server)
    thumb(page, "Like").click()
    assert "Stored" in feedback_message(page, "Stored")
    (row,) = session_rows(chat_server, session)
    stored = as_judgement(row)
    assert stored.verdict == "up" and stored.reply_a.strip() == reply.strip()
    assert stored.prompt[-1] == {"role": "user", "content": "Rate this one"}
    assert stored.model_a == chat_server.tiny and stored.settings["max_new_tokens"] == 6
    thumb(page, "Dislike").click()  # changing one's mind replaces the rating
    feedback_message(page, "once")
    assert [r["verdict"] for r in session_rows(chat_server, session)] == ["down"]
    thumb(page, "Dislike").click()  # the same thumb again: withdrawn
    feedback_message(page, "withdrawn")
    assert session_rows(chat_server, session) == []
    assert isinstance(feedback_stats(page), dict)


def test_compare_picks_double_click_clear_and_a_locked_database(page, chat_server, tmp_path):
    page.check("#compare input")
    page.locator("#pick-left").wait_for(state="visible")
    page.click("#advanced button")
    set_slider(page, "max-new-tokens", 6)
    send(page, "Which side?")
    wait_for_bot_count(page, 1, "#chat-a")
    wait_for_bot_count(page, 1, "#chat-b")
    left, right = wait_until_idle(page, "#chat-a"), wait_until_idle(page, "#chat-b")
    session = session_of(page, chat_server)
    page.dblclick("#pick-right")  # a double click stores one judgement
    feedback_message(page, "right is better")
    page.wait_for_timeout(500)
    (row,) = session_rows(chat_server, session)
    stored = as_judgement(row)
    assert (stored.verdict, stored.reply_a.strip(), (stored.reply_b or "").strip()) == (
        "right",
        left.strip(),
        right.strip(),
    )
    stats = feedback_stats(page, chat_server.tiny)
    assert stats[chat_server.tiny]["wins"] + stats[chat_server.tiny]["losses"] >= 1

    # A locked database: the pick is refused with the database named, the stored one survives.
    url = chat_server.app.feedback.store.url
    locker = sqlite3.connect(url.removeprefix("sqlite:///"))
    locker.execute("BEGIN EXCLUSIVE")
    try:
        page.click("#pick-tie")
        message = feedback_message(page, "NOT stored")
        assert "judgements.db" in message and "locked" in message
    finally:
        locker.rollback()
        locker.close()
    assert [r["verdict"] for r in session_rows(chat_server, session)] == ["right"]

    page.click("#clear-ratings")
    feedback_message(page, "Deleted 1")
    assert session_rows(chat_server, session) == []


def test_a_stopped_reply_cannot_be_rated(page, chat_server):
    pick_model(page, chat_server.slow)
    page.click("#advanced button")
    set_slider(page, "max-new-tokens", 2000)
    send(page, "A long story please")
    page.wait_for_function("""() => [...document.querySelectorAll('#chat-a [data-testid="bot"]')]
                              .some(el => el.innerText.trim().length > 5)""")
    page.click("#stop")
    wait_until_idle(page, quiet_s=1.5)
    session = session_of(page, chat_server)
    thumb(page, "Like").click()
    assert "stopped before it finished" in feedback_message(page, "Not stored")  # never stored, whatever the timing
    assert session_rows(chat_server, session) == []
