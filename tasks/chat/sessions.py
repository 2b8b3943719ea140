"""What the chat server keeps per browser session: the stop switches of its running replies and a short log.

The conversation itself stays in the browser session (the Chatbot's value), so two users never see
each other's history.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

LOG_LENGTH = 20  # generations kept per session for the app's log panel


@dataclass
class _Session:
    running: dict[int, tuple[threading.Event, threading.Event]] = field(default_factory=dict)  # stop, done
    generations: deque = field(default_factory=lambda: deque(maxlen=LOG_LENGTH))


class Sessions:
    """Per browser session (Gradio's session hash): the stop switches of its running replies and
    a log of its last generations."""

    def __init__(self):
        self._sessions: dict[str, _Session] = {}
        self._guard = threading.Lock()
        self._ids = itertools.count(1)

    def _get(self, session: str) -> _Session:
        return self._sessions.setdefault(session, _Session())

    @contextlib.contextmanager
    def generation(self, session: str) -> Iterator[threading.Event]:
        """A stop switch for one reply; registered while the reply runs."""
        stop, done = threading.Event(), threading.Event()
        with self._guard:
            key = next(self._ids)
            self._get(session).running[key] = (stop, done)
        try:
            yield stop
        finally:
            done.set()
            with self._guard:
                self._get(session).running.pop(key, None)

    def stop(self, session: str, wait_s: float = 10.0) -> int:
        """Stop every reply of the session and wait until their generation threads ended."""
        with self._guard:
            running = list(self._get(session).running.values())
        for stop, _ in running:
            stop.set()
        deadline = time.monotonic() + wait_s
        for _, done in running:
            done.wait(max(0.0, deadline - time.monotonic()))
        return len(running)

    def record(self, session: str, entry: dict) -> None:
        with self._guard:
            self._get(session).generations.append(entry)

    def log(self, session: str) -> list[dict]:
        with self._guard:
            return list(self._get(session).generations)

    def running_count(self, session: str) -> int:
        with self._guard:
            return len(self._get(session).running)

    def forget(self, session: str) -> None:
        with self._guard:
            self._sessions.pop(session, None)
