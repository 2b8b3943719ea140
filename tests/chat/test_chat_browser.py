"""The chat app in a real browser: Debian's Chromium driven by Playwright against the served app.

Needs `apt-get install -y chromium` (never `playwright install`). Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail("Debian's chromium is missing: apt-get install -y chromium (the browser tests need it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright gives every launch a fresh, temporary profile (user-data dir).
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_app(browser, url: str):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#message textarea")
    return context, page


@pytest.fixture()
def page(browser, chat_server):
    context, page = open_app(browser, chat_server.url)
    yield page
    context.close()


def bot_texts(page, chat: str = "#chat-a") -> list[str]:
    return page.locator(f'{chat} [data-testid="bot"]').all_inner_texts()


def send(page, text: str, with_enter: bool = True) -> None:
    page.fill("#message textarea", text)
    if with_enter:
        page.press("#message textarea", "Enter")
    else:
        page.click("#submit")


def wait_for_bot_count(page, count: int, chat: str = "#chat-a") -> None:
    page.wait_for_function(f"""() => document.querySelectorAll('{chat} [data-testid="bot"]').length >= {count}
                               && !document.querySelector('{chat} .pending')""")


def wait_until_idle(page, chat: str = "#chat-a", quiet_s: float = 1.0, limit_s: float = 60) -> str:
    """The last bot message once it stopped changing for `quiet_s`."""
    deadline = time.monotonic() + limit_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        texts = bot_texts(page, chat)
        current = texts[-1] if texts else None
        if current != last:
            last, since = current, time.monotonic()
        elif current is not None and time.monotonic() - since >= quiet_s:
            return current
        time.sleep(0.1)
    raise AssertionError(f"{chat} never settled; last text {last!r}")


def pick_model(page, value: str, dropdown: str = "#model-a") -> None:
    page.click(f"{dropdown} input")
    # The open dropdown's options are rendered as one listbox (not inside the dropdown's block).
    page.locator("ul.option-list li[role=option]").filter(has_text=value).first.click()
    page.wait_for_function(
        f"""() => (document.querySelector('{dropdown} input')?.value ?? '').endsWith({json.dumps(value)})"""
    )


def set_slider(page, elem_id: str, value: float) -> None:
    """Move the slider itself (its range input), as a user dragging it does."""
    shown = f"""() => document.querySelector('#{elem_id} input[type=number]')?.value == '{value}'"""
    # A move made while the accordion is still opening can be lost (seen under load): move it again,
    # as a person would, until the slider's number box shows the value.
    # The value must also stay: a move made before the page finished loading can be reset by it.
    for _ in range(5):
        slider = page.locator(f"#{elem_id} input[type=range]")
        slider.wait_for(state="visible")
        slider.fill(str(value))
        slider.dispatch_event("change")  # the release at the end of a drag: Gradio commits the value then
        try:
            page.wait_for_function(shown, timeout=5000)
        except PlaywrightTimeout:
            continue
        page.wait_for_timeout(1000)
        if page.evaluate(shown):
            return
    page.wait_for_function(shown)


def generation_log(page, until=None, limit_s: float = 30) -> list[dict]:
    """The session's generation log, as the app's debug panel shows it; with `until`, once the log
    satisfies it (or `limit_s` passed): the panel is updated when a turn's last event reaches the
    page, which can be after its reply text shows."""
    box = page.locator("#generation-log-box")
    if not page.locator("#generation-log textarea").is_visible():
        box.locator("button").first.click()
    textarea = page.locator("#generation-log textarea")
    textarea.wait_for(state="visible")
    deadline = time.monotonic() + limit_s
    while True:
        log = json.loads(textarea.input_value())
        if until is None or until(log) or time.monotonic() >= deadline:
            return log
        time.sleep(0.1)


def generate_threads(model: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"generate:{model}" and t.is_alive()]


def test_page_shows_disclaimer_privacy_link_and_controls(page, chat_server):
    assert "may be wrong" in page.locator("#disclaimer").inner_text()
    link = page.get_by_role("link", name="Privacy policy")
    assert link.get_attribute("href") == "https://example.org/chat-privacy"
    for control in ("#submit", "#stop", "#clear", "#model-a", "#advanced"):
        assert page.locator(control).is_visible(), control
    page.click("#advanced button")
    for slider in ("temperature", "top-p", "top-k", "repetition-penalty", "max-new-tokens"):
        page.locator(f"#{slider} input[type=range]").wait_for(state="visible")
    assert page.locator("#system-prompt textarea").input_value() == "You are a tiny test model."


def test_reply_streams_in_and_stop_ends_the_generation(page, chat_server):
    pick_model(page, chat_server.slow)  # the deep test model: about 20-30 tokens/s here
    page.click("#advanced button")
    set_slider(page, "max-new-tokens", 2000)
    send(page, "Tell me a long story", with_enter=False)
    states: list[str] = []
    deadline = time.monotonic() + 60
    # Three growing states prove streaming; random byte-level tokens can keep the streamer holding back
    # an incomplete UTF-8 character for a while, so more is not guaranteed within the deadline.
    while len(set(states)) < 3 and time.monotonic() < deadline:
        texts = bot_texts(page)
        if texts and texts[-1].strip():
            states.append(texts[-1])
        time.sleep(0.05)
    distinct = list(dict.fromkeys(states))
    assert len(distinct) >= 3, f"expected the reply to grow in several steps, saw {distinct!r}"
    assert all(len(a) <= len(b) for a, b in itertools.pairwise(distinct))
    assert generate_threads(chat_server.slow)
    page.click("#stop")
    deadline = time.monotonic() + 10
    while generate_threads(chat_server.slow) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not generate_threads(chat_server.slow), "Stop did not end the generation thread"
    stopped_text = wait_until_idle(page, quiet_s=1.5)
    assert stopped_text.strip()
    log = generation_log(page, until=lambda log: any(e.get("status") == "stopped" for e in log))
    # The long reply's own entry (found by its settings, not its position in the log) says it was stopped.
    long_replies = [e for e in log if e.get("settings", {}).get("max_new_tokens") == 2000]
    assert len(long_replies) == 1 and long_replies[0]["status"] == "stopped", json.dumps(log, indent=1)
    # The model is free: the next message is answered at once.
    set_slider(page, "max-new-tokens", 4)
    started = time.monotonic()
    send(page, "And a short one")
    wait_for_bot_count(page, 2)
    assert wait_until_idle(page, quiet_s=0.5).strip()
    assert time.monotonic() - started < 20
    page.screenshot(path=str(ARTIFACTS / "chat-browser-stop.png"), full_page=True)


def test_a_moved_slider_reaches_generation(page, chat_server):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_server.tiny)
    single_tokens = {tokenizer.decode([i], skip_special_tokens=True).strip() for i in range(len(tokenizer))}
    page.click("#advanced button")
    set_slider(page, "max-new-tokens", 1)
    set_slider(page, "temperature", 0)  # greedy: the same token every run, so the test is deterministic
    send(page, "One token please")
    wait_for_bot_count(page, 1)
    reply = wait_until_idle(page, quiet_s=0.5)
    assert reply.strip() in single_tokens, f"{reply!r} is longer than one token"
    entry = generation_log(page, until=lambda log: log and log[-1].get("status") == "done")[-1]
    assert entry["settings"]["max_new_tokens"] == 1 and entry["settings"]["temperature"] == 0.0
    assert entry["model"] == chat_server.tiny and entry["status"] == "done"


def test_switching_models_and_a_model_that_fails_to_load(page, chat_server):
    pick_model(page, chat_server.broken)
    send(page, "Hello")
    page.locator("#notice-a").filter(has_text="Could not load").wait_for()
    assert "Could not load" in page.locator("#chat-a").inner_text()
    pick_model(page, chat_server.tiny)
    send(page, "Hello again")
    page.wait_for_function("""() => [...document.querySelectorAll('#chat-a [data-testid="bot"]')]
                              .some(el => !el.innerText.includes('Could not load') && el.innerText.trim())""")
    log = generation_log(page, until=lambda log: len(log) >= 2 and log[-1].get("status") == "done")
    assert [(e["model"], e["status"]) for e in log] == [(chat_server.broken, "load-failed"), (chat_server.tiny, "done")]
    page.click("#clear")
    page.wait_for_function("""() => document.querySelectorAll('#chat-a [data-testid="bot"]').length === 0""")


def test_compare_mode_streams_two_replies_side_by_side(page, chat_server):
    page.check("#compare input")
    page.locator("#chat-b").wait_for(state="visible")
    pick_model(page, chat_server.slow, "#model-b")
    page.click("#advanced button")
    set_slider(page, "max-new-tokens", 12)
    send(page, "Which of you is better?")
    wait_for_bot_count(page, 1, "#chat-a")
    wait_for_bot_count(page, 1, "#chat-b")
    assert wait_until_idle(page, "#chat-a").strip() and wait_until_idle(page, "#chat-b").strip()
    models = {e["model"] for e in generation_log(page, until=lambda log: len({e["model"] for e in log}) >= 2)}
    assert models == {chat_server.tiny, chat_server.slow}
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-browser-compare.png"), full_page=True)


def test_two_browser_sessions_never_see_each_others_history(browser, chat_server):
    alice_context, alice = open_app(browser, chat_server.url)
    bob_context, bob = open_app(browser, chat_server.url)
    try:
        send(alice, "alice-secret-7731")
        send(bob, "bob-note-4410")
        wait_for_bot_count(alice, 1)
        wait_for_bot_count(bob, 1)
        assert "alice-secret-7731" in alice.locator("#chat-a").inner_text()
        assert "bob-note-4410" not in alice.locator("#chat-a").inner_text()
        assert "bob-note-4410" in bob.locator("#chat-a").inner_text()
        assert "alice-secret-7731" not in bob.locator("#chat-a").inner_text()
        assert [e["model"] for e in generation_log(alice, until=lambda log: len(log) >= 1)] == [chat_server.tiny]
        ARTIFACTS.mkdir(exist_ok=True)
        alice.screenshot(path=str(ARTIFACTS / "chat-browser.png"), full_page=True)
    finally:
        alice_context.close()
        bob_context.close()
