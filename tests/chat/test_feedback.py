"""Judgements: the SQL store, the pairing rules, the split, and what the app refuses (no server, no browser)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from tasks.chat.feedback.collect import FeedbackCollector
from tasks.chat.feedback.config import FeedbackOptions
from tasks.chat.feedback.pairing import make_pairs, split_pairs, version_stats
from tasks.chat.feedback.records import Judgement
from tasks.chat.feedback.store import FeedbackStore, FeedbackStoreError, as_judgement
from tasks.chat.history import reply_key
from tasks.chat.sessions import Sessions


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def rating(prompt: str, reply: str, verdict: str, session: str = "s1", version: str = "v1") -> Judgement:
    return Judgement(session, verdict, user(prompt), reply, "model", version)


def pick(prompt: str, left: str, right: str, verdict: str, session: str = "s1") -> Judgement:
    return Judgement(session, verdict, user(prompt), left, "champion", "v1", right, "candidate", "v2")


@pytest.fixture()
def store(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'judgements.db'}")
    yield store
    store.close()


def test_store_keeps_every_field_and_one_row_per_double_click(store):
    first = store.add(pick("Hi?", "Hello there", "Go away", "left"))
    again = store.add(pick("Hi?", "Hello there", "Go away", "left"))  # the same click twice
    assert (first.replaced, again.replaced) == (False, True) and first.id == again.id
    store.add(rating("Hi?", "Hello there", "up"))
    rows = list(store.rows())
    assert len(rows) == 2
    stored = as_judgement(rows[0])
    assert stored.prompt == user("Hi?") and stored.reply_b == "Go away" and stored.version_b == "v2"
    assert stored.created_at.tzinfo is not None


def test_a_changed_rating_replaces_the_earlier_one_and_clear_removes_only_that_session(store):
    store.add(rating("Q", "A", "up", session="alice"))
    store.add(rating("Q", "A", "down", session="alice"))
    store.add(rating("Q", "B", "up", session="bob"))
    assert [r["verdict"] for r in store.rows()] == ["down", "up"]
    assert store.clear_session("alice") == 1
    assert [r["session"] for r in store.rows()] == ["bob"]


def test_pairing_rules_ties_lone_ratings_duplicates_and_versions():
    judgements = [
        pick("P1", "good", "bad", "left"),
        pick("P1", "good", "bad", "left", session="s2"),  # the same pair from another user: a duplicate
        pick("P2", "meh", "fine", "right"),
        pick("P3", "x", "y", "tie"),
        rating("P4", "nice", "up"),
        rating("P4", "rude", "down", version="v2"),
        rating("P5", "alone", "up"),  # a lone rating: kept, never paired
    ]
    pairing = make_pairs(judgements)
    rows = sorted((p.prompt[0]["content"], p.chosen, p.rejected, p.source) for p in pairing.pairs)
    assert rows == [
        ("P1", "good", "bad", "pick"),
        ("P2", "fine", "meh", "pick"),
        ("P4", "nice", "rude", "ratings"),
    ]
    assert (pairing.judgements, pairing.ties_dropped, pairing.duplicates_removed, pairing.lone_ratings) == (7, 1, 1, 1)
    assert pairing.pairs_per_version == {"v1": 2, "v2": 1}
    stats = version_stats(judgements)
    assert stats["v1"].wins == 2 and stats["v1"].losses == 1 and stats["v1"].ties == 1
    assert stats["v2"].win_rate == round(1 / 3, 3) and stats["v1"].up == 2 and stats["v2"].down == 1


def test_split_keeps_each_prompt_on_one_side_and_is_stable():
    pairs = make_pairs([pick(f"P{i}", f"good {j}", "bad", "left") for i in range(10) for j in range(3)]).pairs
    train, held_out = split_pairs(pairs, 0.2, seed=0)
    train_prompts = {p.prompt[0]["content"] for p in train}
    eval_prompts = {p.prompt[0]["content"] for p in held_out}
    assert len(eval_prompts) == 2 and not train_prompts & eval_prompts and len(train) + len(held_out) == 30
    more = pairs + make_pairs([pick("P99", "good", "bad", "left")]).pairs
    assert {p.prompt[0]["content"] for p in split_pairs(more, 0.2, seed=0)[1]} - {"P99"} <= eval_prompts


def test_bad_judgements_are_refused_with_the_reason(store):
    with pytest.raises(ValueError, match="empty reply"):
        store.add(rating("Q", "   ", "up"))
    with pytest.raises(ValueError, match="unknown verdict"):
        store.add(rating("Q", "A", "meh"))
    assert list(store.rows()) == []


def test_a_locked_database_is_named_and_loses_nothing_stored_before(tmp_path):
    path = tmp_path / "locked.db"
    store = FeedbackStore(f"sqlite:///{path}")
    store.add(rating("Q", "kept", "up"))
    locker = sqlite3.connect(path)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(FeedbackStoreError, match=r"locked\.db.*database is locked"):
            store.add(rating("Q", "lost", "down"))
    finally:
        locker.rollback()
        locker.close()
    assert [r["reply_a"] for r in store.rows()] == ["kept"]
    store.close()


def test_an_unreachable_database_url_is_named_without_its_password():
    store = FeedbackStore("postgresql+psycopg://feedback:s3cret-pw@127.0.0.1:1/judgements")
    with pytest.raises(FeedbackStoreError) as caught:
        store.add(rating("Q", "A", "up"))
    assert "127.0.0.1:1/judgements" in str(caught.value) and "s3cret-pw" not in str(caught.value)


HISTORY = [
    {"role": "user", "content": "Hello?"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "More?"},
    {"role": "assistant", "content": "Notice text", "metadata": {"title": "Notice"}},
    {"role": "assistant", "content": [{"type": "text", "text": "Sure thing"}]},
]


def collector_for(tmp_path, entries):
    sessions = Sessions()
    for entry in entries:
        sessions.record("s1", entry)
    options = FeedbackOptions(database=f"sqlite:///{tmp_path / 'j.db'}")
    return FeedbackCollector(options, sessions, resolve_version=lambda choice: f"{choice}#7")


def test_rating_a_reply_stores_the_conversation_up_to_it_with_settings_and_version(tmp_path):
    settings = {"temperature": 0.3}
    # The server generated "Sure thing\n"; Gradio hands the text back tidied, the vote still finds it.
    entry = {"model": "m", "reply_key": reply_key("Sure thing\n"), "status": "done", "settings": settings}
    collector = collector_for(tmp_path, [entry])
    # Gradio reports the first message of a group: here the notice box before the reply.
    assert collector.rate(HISTORY, 3, True, "m", "Be brief.", "s1").startswith("✅")
    (row,) = collector.store.rows()
    stored = as_judgement(row)
    assert [m["content"] for m in stored.prompt] == ["Be brief.", "Hello?", "Hi there", "More?"]
    assert stored.reply_a == "Sure thing" and stored.version_a == "m#7" and stored.settings == settings
    assert "withdrawn" in collector.rate(HISTORY, 3, "", "m", "Be brief.", "s1")
    assert collector.store.count() == 0


def test_stopped_running_and_error_replies_are_refused(tmp_path):
    # The page shows "Sure thing", a part of what the server had generated when it was stopped.
    stopped = {"model": "m", "reply_key": reply_key("Sure thing, and then"), "status": "stopped"}
    done = {"model": "m", "reply_key": reply_key("Hi there"), "status": "done"}
    collector = collector_for(tmp_path, [done, stopped])
    assert "stopped before it finished" in collector.rate(HISTORY, 4, True, "m", "", "s1")
    assert "only the model's replies" in collector.rate(HISTORY, 0, True, "m", "", "s1")
    with collector.sessions.generation("s1"):
        assert "still being generated" in collector.rate(HISTORY, 1, True, "m", "", "s1")
    empty = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]
    assert "empty reply" in collector.rate(empty, 1, False, "m", "", "s1")
    assert collector.store.count() == 0


def test_concurrent_clicks_from_many_sessions_are_all_stored(tmp_path):
    collector = collector_for(tmp_path, [])
    history = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    threads = [
        threading.Thread(target=collector.rate, args=(history, 1, True, "m", "", f"session-{i}")) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert collector.store.count() == 8
