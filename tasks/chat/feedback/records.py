"""One judgement a user gave in the chat app: a thumbs up/down on a reply, or a compare-mode pick.

A judgement holds what a preference pair needs and what the statistics need: the prompt (the
conversation up to the judged turn, as chat messages), the reply or the two replies, which model
(and resolved version) wrote each, the sampling settings, the browser session and the time. Never
a login name, password or token: the session is Gradio's random session hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

RATINGS = ("up", "down")  # thumbs on one reply
PICKS = ("left", "right", "tie")  # compare mode: which side is better
VERDICTS = RATINGS + PICKS


@dataclass
class Judgement:
    session: str
    verdict: str  # one of VERDICTS
    prompt: list[dict]  # [{"role", "content"}, ...] up to the judged turn, ending with the user's message
    reply_a: str  # the judged reply; in compare mode the left one
    model_a: str  # the picker's choice that wrote reply_a
    version_a: str  # what served it: the resolved adapter version, else the choice itself
    reply_b: str | None = None  # compare mode: the right reply
    model_b: str | None = None
    version_b: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def kind(self) -> str:
        return "rating" if self.verdict in RATINGS else "pick"

    def key(self) -> str:
        """The same judgement given twice (a double click) has the same key; the store keeps one.

        A rating's key leaves out the verdict: a reply has one rating per session, the latest.
        """
        verdict = "" if self.kind == "rating" else "pick"
        parts = [self.session, verdict, self.prompt, self.reply_a, self.reply_b, self.model_a, self.model_b]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def validate(self) -> None:
        """ValueError naming what is wrong; the UI shows it and stores nothing."""
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}; expected one of {', '.join(VERDICTS)}")
        if not self.prompt or self.prompt[-1].get("role") != "user":
            raise ValueError("the judged reply answers no user message")
        if not self.reply_a.strip() or (self.kind == "pick" and not (self.reply_b or "").strip()):
            raise ValueError("an empty reply cannot be judged")
