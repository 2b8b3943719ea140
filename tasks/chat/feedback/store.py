"""Where judgements live: one SQL table, in a SQLite file under FTLLM_DATA_DIR by default or in any
database SQLAlchemy reaches (Postgres for a deployment that several app replicas share).

Every write is its own transaction, committed before the UI confirms; a failed write rolls back
only itself, so a locked or unreachable database loses no judgement stored before.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from tasks.chat.feedback.records import Judgement
from tasks.core.config import data_dir

metadata = sa.MetaData()
judgements = sa.Table(
    "judgements",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("session", sa.String(128), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),  # JSON list of chat messages
    sa.Column("reply_a", sa.Text, nullable=False),
    sa.Column("model_a", sa.Text, nullable=False),
    sa.Column("version_a", sa.Text, nullable=False),
    sa.Column("reply_b", sa.Text),
    sa.Column("model_b", sa.Text),
    sa.Column("version_b", sa.Text),
    sa.Column("settings", sa.Text, nullable=False),  # JSON object
)

# A locked SQLite file fails after this long instead of hanging the user's click.
SQLITE_LOCK_TIMEOUT_S = 2.0


class FeedbackStoreError(RuntimeError):
    """The database cannot be reached or written; the message names it (never its password)."""


@dataclass(frozen=True)
class Saved:
    id: int
    replaced: bool  # True: the same judgement was stored already (a double click), or a rating changed


def default_url() -> str:
    return f"sqlite:///{data_dir() / 'feedback' / 'judgements.db'}"


def safe_url(url: str) -> str:
    """The URL as messages show it: the password masked."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even a URL: show nothing of it that could be a secret
        return "<unparseable database URL>"


class FeedbackStore:
    def __init__(self, url: str | None = None):
        self.url = url or default_url()
        self.shown_url = safe_url(self.url)
        try:
            parsed = sa.engine.make_url(self.url)
        except Exception as error:
            raise FeedbackStoreError(f"feedback.database: not a SQLAlchemy URL: {self.shown_url}") from error
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            connect_args["timeout"] = SQLITE_LOCK_TIMEOUT_S
            if parsed.database:
                from pathlib import Path

                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        elif parsed.get_backend_name() == "postgresql":
            connect_args["connect_timeout"] = 5
        self.engine = sa.create_engine(self.url, connect_args=connect_args, pool_pre_ping=True)
        self._created = False
        self._creating = threading.Lock()  # the first clicks of several users arrive together

    def _fail(self, doing: str, error: Exception) -> FeedbackStoreError:
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        return FeedbackStoreError(f"feedback database {self.shown_url}: could not {doing}: {reason}")

    def _ensure_table(self) -> None:
        with self._creating:
            if not self._created:
                metadata.create_all(self.engine)
                self._created = True

    def add(self, judgement: Judgement) -> Saved:
        """Store `judgement` (validated); the same key again replaces the earlier row's verdict."""
        judgement.validate()
        row = {
            "key": judgement.key(),
            "created_at": judgement.created_at,
            "session": judgement.session,
            "kind": judgement.kind,
            "verdict": judgement.verdict,
            "prompt": json.dumps(judgement.prompt, ensure_ascii=False),
            "reply_a": judgement.reply_a,
            "model_a": judgement.model_a,
            "version_a": judgement.version_a,
            "reply_b": judgement.reply_b,
            "model_b": judgement.model_b,
            "version_b": judgement.version_b,
            "settings": json.dumps(judgement.settings, sort_keys=True),
        }
        try:
            self._ensure_table()
            with self.engine.begin() as connection:
                try:
                    with connection.begin_nested():
                        new_id = connection.execute(judgements.insert().values(**row)).inserted_primary_key[0]
                    return Saved(int(new_id), replaced=False)
                except IntegrityError:  # the key exists: a double click or a changed rating
                    updated = {k: row[k] for k in ("verdict", "created_at", "settings")}
                    connection.execute(judgements.update().where(judgements.c.key == row["key"]).values(**updated))
                    existing = connection.execute(sa.select(judgements.c.id).where(judgements.c.key == row["key"]))
                    return Saved(int(existing.scalar_one()), replaced=True)
        except SQLAlchemyError as error:
            raise self._fail("store the judgement", error) from None

    def withdraw(self, judgement: Judgement) -> int:
        """Delete the rating `judgement` names (the user clicked the same thumb again)."""
        return self._delete(judgements.c.key == judgement.key(), "withdraw the rating")

    def clear_session(self, session: str) -> int:
        """Delete every judgement of one browser session; returns how many."""
        return self._delete(judgements.c.session == session, "clear the session's judgements")

    def _delete(self, where, doing: str) -> int:
        try:
            self._ensure_table()
            with self.engine.begin() as connection:
                return connection.execute(judgements.delete().where(where)).rowcount
        except SQLAlchemyError as error:
            raise self._fail(doing, error) from None

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every stored row as the database holds it (JSON columns still text), oldest first."""
        try:
            self._ensure_table()
            with self.engine.connect() as connection:
                result = connection.execute(sa.select(judgements).order_by(judgements.c.id))
                rows = [dict(r._mapping) for r in result]
        except SQLAlchemyError as error:
            raise self._fail("read the judgements", error) from None
        yield from rows

    def count(self, session: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(judgements)
        if session is not None:
            query = query.where(judgements.c.session == session)
        try:
            self._ensure_table()
            with self.engine.connect() as connection:
                return int(connection.execute(query).scalar_one())
        except SQLAlchemyError as error:
            raise self._fail("count the judgements", error) from None

    def close(self) -> None:
        self.engine.dispose()


def as_judgement(row: dict[str, Any]) -> Judgement:
    """A stored row back as a Judgement; ValueError names what is malformed in it."""
    try:
        prompt = json.loads(row["prompt"])
        settings = json.loads(row["settings"] or "{}")
    except (TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"prompt or settings is not JSON: {error}") from None
    if not isinstance(prompt, list) or not all(
        isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in ("system", "user", "assistant")
        for m in prompt
    ):
        raise ValueError("prompt is not a list of chat messages")
    created = row["created_at"]
    if isinstance(created, dt.datetime) and created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)  # SQLite hands back naive times; they were stored in UTC
    judgement = Judgement(
        session=row["session"],
        verdict=row["verdict"],
        prompt=prompt,
        reply_a=row["reply_a"] or "",
        model_a=row["model_a"],
        version_a=row["version_a"],
        reply_b=row["reply_b"],
        model_b=row["model_b"],
        version_b=row["version_b"],
        settings=settings if isinstance(settings, dict) else {},
        created_at=created,
    )
    judgement.validate()
    return judgement
