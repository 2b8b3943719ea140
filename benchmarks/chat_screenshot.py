"""Take the README's screenshot of the chat app: the default model (SmolLM2) answering in Chromium.

    python benchmarks/chat_screenshot.py [--config configs/chat.yaml] [--out docs/chat-app.png]

Serves the app from the config on a free loopback port, asks two questions in Debian's Chromium
(driven by Playwright), waits for the streamed replies and saves a screenshot of the page.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402,F401  (quiet defaults before the libraries load)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
QUESTIONS = ["What is the capital of France?", "Give me one tip for learning Python."]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_reply(page, count: int, quiet_s: float = 2.0, limit_s: float = 180) -> str:
    """The newest bot message once there are `count` of them and it stopped growing."""
    deadline, last, since = time.monotonic() + limit_s, None, time.monotonic()
    while time.monotonic() < deadline:
        texts = page.locator('#chat-a [data-testid="bot"]').all_inner_texts()
        current = texts[-1] if len(texts) >= count else None
        if current != last:
            last, since = current, time.monotonic()
        elif current and time.monotonic() - since >= quiet_s:
            return current
        time.sleep(0.2)
    raise TimeoutError(f"no settled reply #{count} after {limit_s} s (last: {last!r})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/chat.yaml")
    parser.add_argument("--out", default="docs/chat-app.png")
    args = parser.parse_args(argv)

    import torch
    from playwright.sync_api import sync_playwright

    from tasks.chat.config import ChatAppConfig
    from tasks.chat.server import launch
    from tasks.chat.ui import build_app
    from tasks.core.config import load_config

    torch.set_num_threads(1)
    config = load_config(ChatAppConfig, args.config, [f"server.port={free_port()}", "sampling.max_new_tokens=96"])
    app = build_app(config)
    app.chat_service.pool.get(config.models[0])
    url = launch(app, config)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.wait_for_selector("#message textarea")
            for number, question in enumerate(QUESTIONS, start=1):
                page.fill("#message textarea", question)
                page.press("#message textarea", "Enter")
                print(f"Q: {question}\nA: {wait_for_reply(page, number)}")
            page.click("#advanced button")
            time.sleep(0.5)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        app.close()
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
