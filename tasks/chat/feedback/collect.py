"""What the chat app does when a user rates a reply, picks a side in compare mode or clears their ratings.

Each call returns the message the UI shows. Nothing half-done is stored: a reply still being
generated, one that was stopped mid-way, an empty reply or an error box is refused with the reason;
a database that is locked or unreachable is named, and what was stored before stays stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from tasks.chat.feedback.config import FeedbackOptions
from tasks.chat.feedback.pairing import version_stats
from tasks.chat.feedback.records import Judgement
from tasks.chat.feedback.store import FeedbackStore, FeedbackStoreError, as_judgement
from tasks.chat.history import message_text, model_messages, reply_key
from tasks.chat.sessions import Sessions
from tasks.publishing import PublishError, pinned_uri

log = logging.getLogger(__name__)

VERDICT_TEXT = {"up": "👍", "down": "👎", "left": "left is better", "right": "right is better", "tie": "tie"}


def current_version(choice: str) -> str:
    """What a choice serves now: a registry alias pinned to its version; else the choice itself."""
    try:
        return pinned_uri(choice)
    except PublishError:
        return choice


class NotJudgeable(ValueError):
    """Why this reply cannot be judged; shown to the user as is."""


def _is_box(message: dict) -> bool:
    return bool((message.get("metadata") or {}).get("title"))


def judged_turn(history: list[dict], index: int, system_prompt: str) -> tuple[list[dict], str]:
    """(prompt messages, reply text) of the assistant reply at `index` (or the first real reply
    after it: Gradio reports the first message of a group, which may be a notice box)."""
    position = index
    while position < len(history) and history[position].get("role") == "assistant" and _is_box(history[position]):
        position += 1
    if position >= len(history) or history[position].get("role") != "assistant":
        raise NotJudgeable("only the model's replies can be rated (not notices, errors or sources)")
    reply = message_text(history[position].get("content"))
    prompt = model_messages(history[:position], system_prompt)
    if not prompt or prompt[-1]["role"] != "user":
        raise NotJudgeable("this reply answers no message of yours")
    return prompt, reply


def last_turn(history: list[dict], system_prompt: str) -> tuple[list[dict], str]:
    """The newest reply of a conversation, as `judged_turn` sees it."""
    for position in range(len(history) - 1, -1, -1):
        if history[position].get("role") == "assistant" and not _is_box(history[position]):
            return judged_turn(history, position, system_prompt)
        if history[position].get("role") == "user":
            break
    raise NotJudgeable("no finished reply to compare yet")


class FeedbackCollector:
    """The chat app's judgements: validated, stored, cleared, summed up per model version."""

    def __init__(
        self,
        options: FeedbackOptions,
        sessions: Sessions,
        resolve_version: Callable[[str], str] | None = None,
        store: FeedbackStore | None = None,
    ):
        self.options = options
        self.sessions = sessions
        self.resolve_version = resolve_version or current_version
        self._store = store
        self._opening = threading.Lock()

    @property
    def store(self) -> FeedbackStore:
        with self._opening:
            if self._store is None:
                self._store = FeedbackStore(self.options.database_url())
            return self._store

    def _generation(self, session: str, model: str, reply: str) -> dict[str, Any]:
        """The generation-log entry of the reply: its status and sampling settings."""
        if self.sessions.running_count(session):
            raise NotJudgeable("a reply is still being generated: rate it once it is finished")
        entries = [e for e in reversed(self.sessions.log(session)) if e.get("model") == model and "reply_key" in e]
        key = reply_key(reply)
        for entry in entries:
            if entry["reply_key"] == key:
                if entry.get("status") == "stopped":
                    raise NotJudgeable("this reply was stopped before it finished; partial replies are not rated")
                if entry.get("status") != "done":
                    raise NotJudgeable(f"this reply did not complete ({entry.get('status')})")
                return entry
        # The page can hold less of a stopped reply than the server had generated when it stopped.
        if any(e.get("status") == "stopped" for e in entries):
            raise NotJudgeable("this reply was stopped before it finished; partial replies are not rated")
        return {}  # generated before a restart of the app or older than the log: its settings are unknown

    def _save(self, judgement: Judgement) -> str:
        try:
            saved = self.store.add(judgement)
        except ValueError as error:
            return f"⚠️ Not stored: {error}."
        except FeedbackStoreError as error:
            log.warning("%s", error)
            return f"⚠️ Your rating was NOT stored ({error}). Ratings stored before are safe; please try again."
        self._log(judgement)
        what = VERDICT_TEXT[judgement.verdict]
        if saved.replaced:
            return f"✅ Stored once: “{what}” (clicking again replaces the earlier judgement, never adds one)."
        return f"✅ Stored: “{what}”."

    def _log(self, judgement: Judgement) -> None:
        self.sessions.record(
            judgement.session,
            {"feedback": judgement.verdict, "model": judgement.model_a, "version": judgement.version_a}
            | ({"model_b": judgement.model_b, "version_b": judgement.version_b} if judgement.model_b else {}),
        )

    def rate(self, history: list[dict], index: Any, liked: Any, model: str, system_prompt: str, session: str) -> str:
        """A thumbs up (liked True) or down (False) on the reply at `index`; '' withdraws it."""
        try:
            position = index[0] if isinstance(index, (list, tuple)) else int(index)
            prompt, reply = judged_turn(list(history or []), position, system_prompt or "")
            if not reply.strip():
                raise NotJudgeable("an empty reply cannot be rated")
            entry = self._generation(session, model, reply)
        except NotJudgeable as why:
            return f"⚠️ Not stored: {why}."
        judgement = Judgement(
            session=session,
            verdict="up" if liked is True else "down",
            prompt=prompt,
            reply_a=reply,
            model_a=model,
            version_a=entry.get("served") or self.resolve_version(model),
            settings=entry.get("settings", {}),
        )
        if liked not in (True, False):  # the same thumb clicked again: the user takes the rating back
            try:
                removed = self.store.withdraw(judgement)
            except FeedbackStoreError as error:
                return f"⚠️ Could not withdraw the rating ({error})."
            return "↩️ Rating withdrawn." if removed else "ℹ️ There was no stored rating on this reply."
        return self._save(judgement)

    def pick(
        self,
        verdict: str,
        history_a: list[dict],
        history_b: list[dict],
        model_a: str,
        model_b: str,
        system_prompt: str,
        session: str,
    ) -> str:
        """Compare mode: the user says which side answered the last message better ('left', 'right', 'tie')."""
        try:
            prompt, left = last_turn(list(history_a or []), system_prompt or "")
            prompt_b, right = last_turn(list(history_b or []), system_prompt or "")
            if prompt[-1] != prompt_b[-1]:
                raise NotJudgeable("the two sides answer different messages")
            if not left.strip() or not right.strip():
                raise NotJudgeable("an empty reply cannot be compared")
            entry = self._generation(session, model_a, left)
            entry_b = self._generation(session, model_b, right)
        except NotJudgeable as why:
            return f"⚠️ Not stored: {why}."
        return self._save(
            Judgement(
                session=session,
                verdict=verdict,
                prompt=prompt,
                reply_a=left,
                model_a=model_a,
                version_a=entry.get("served") or self.resolve_version(model_a),
                reply_b=right,
                model_b=model_b,
                version_b=entry_b.get("served") or self.resolve_version(model_b),
                settings=entry.get("settings", {}),
            )
        )

    def clear(self, session: str) -> str:
        try:
            removed = self.store.clear_session(session)
        except FeedbackStoreError as error:
            return f"⚠️ Could not clear your ratings ({error})."
        return f"🗑️ Deleted {removed} rating(s) of this session."

    def stats(self) -> dict[str, dict]:
        """Per model version: judgements received, thumbs, compare wins/losses/ties and win rate."""
        try:
            judgements = []
            for row in self.store.rows():
                try:
                    judgements.append(as_judgement(row))
                except ValueError:
                    continue  # feedback-export reports malformed rows; the panel just leaves them out
        except FeedbackStoreError as error:
            return {"error": {"message": str(error)}}
        return {version: s.as_dict() for version, s in sorted(version_stats(judgements).items())}
