"""The chat history as the Chatbot holds it, and as the model sees it.

Notices (a trimmed context, a model that failed to load, cited sources) are titled boxes in the
history: shown to the user, never sent back into the model's prompt.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

NOTICE_TITLE = "Notice"
ERROR_TITLE = "Error"
SOURCES_TITLE = "Sources"


def message_text(content: Any) -> str:
    """The text of a Chatbot message: Gradio 6 hands content over as a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "") if content.get("type", "text") == "text" else ""
    if isinstance(content, list):
        return "".join(message_text(part) for part in content)
    return ""


def reply_key(text: str) -> str:
    """A short fingerprint of a reply's text, blind to whitespace: Gradio tidies a message's
    whitespace (inspect.cleandoc) on its way to the browser, so the text it hands back can differ there."""
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:16]


def model_messages(history: list[dict], system_prompt: str) -> list[dict]:
    """The conversation as the model sees it: the system prompt, then the turns without notices."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    for message in history:
        if (message.get("metadata") or {}).get("title"):
            continue  # notices, errors and cited sources are for the user only
        if message.get("role") in ("user", "assistant"):
            messages.append({"role": message["role"], "content": message_text(message.get("content"))})
    return messages


def box(title: str, text: str) -> dict:
    """A titled chat box: for the user's eyes only."""
    return {"role": "assistant", "content": text, "metadata": {"title": title}}


def format_sources(sources: list[dict]) -> str:
    lines = []
    for source in sources:
        name = os.path.basename(str(source.get("source", "?")))
        page = source.get("page")
        where = f"{name}, page {page}" if page is not None else name
        score = source.get("score")
        lines.append(f"- {where}" + (f" (score {score:.2f})" if isinstance(score, (int, float)) else ""))
    return "\n".join(lines) or "- (no sources)"


# The conversation as the browser keeps it (gr.BrowserState, in localStorage): any replica of the
# app that shares `server.state_secret_env` reads it back after a reload or a switch of replica.
STORED_KEY = "ftllm-chat"


def stored(history: list[dict] | None) -> dict:
    """What the browser stores for a conversation."""
    return {"version": 1, "chat": list(history or [])}


def restored(value: dict | None) -> list[dict]:
    """The conversation a browser stored; nothing for an empty, foreign or unreadable value."""
    if not isinstance(value, dict) or value.get("version") != 1 or not isinstance(value.get("chat"), list):
        return []
    return [m for m in value["chat"] if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
