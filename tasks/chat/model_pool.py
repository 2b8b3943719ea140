"""The models the chat app keeps loaded: loaded on first use, the least recently used dropped beyond a limit."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from tasks.chat.loading import LoadedModel, ModelLoadError, load_chat_model
from tasks.publishing import PublishError, pinned_uri


class ModelPool:
    """Models loaded on first use and kept (up to `max_loaded`); a failed load is reported, not kept.

    Loading is serialized, so ten users picking the same adapter load it once.
    """

    def __init__(self, max_loaded: int = 3, placement=None):
        self.max_loaded = max_loaded
        self.placement = placement
        self._loaded: dict[str, LoadedModel] = {}
        self._lru: list[str] = []
        self._guard = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        # One load at a time across choices: transformers' from_pretrained flips process-wide state
        # (torch's default dtype) while it builds a model, so two loads in parallel can break each other.
        self._one_load = threading.Lock()

    def get(self, choice: str) -> LoadedModel:
        """The model for `choice`; a registry alias is looked up on every call, so a promoted
        version is served from the next reply on (the pool keeps models by pinned URI)."""
        try:
            choice = pinned_uri(choice.strip())
        except PublishError as error:
            raise ModelLoadError(choice, str(error)) from None
        with self._guard:
            load_lock = self._loading.setdefault(choice, threading.Lock())
        with load_lock:
            with self._guard:
                if choice in self._loaded:
                    self._touch(choice)
                    return self._loaded[choice]
            with self._one_load:
                loaded = load_chat_model(choice, self.placement)  # raises ModelLoadError
            with self._guard:
                self._loaded[choice] = loaded
                self._touch(choice)
                while len(self._lru) > self.max_loaded:
                    # A reply still streaming from the evicted model keeps its own reference.
                    self._loaded.pop(self._lru.pop(0), None)
            return loaded

    def loaded(self) -> dict[str, LoadedModel]:
        with self._guard:
            return dict(self._loaded)

    def _touch(self, choice: str) -> None:
        if choice in self._lru:
            self._lru.remove(choice)
        self._lru.append(choice)


@dataclass
class ModelPreload:
    """How loading the default model before serving went."""

    model: str
    loaded: bool
    seconds: float | None = None
    context_length: int | None = None
    error: str | None = None  # why it failed to load


def preload(pool: ModelPool, choice: str) -> ModelPreload:
    """Load `choice` into the pool now; a failure is returned, so the app still serves the others."""
    started = time.monotonic()
    try:
        loaded = pool.get(choice)
    except ModelLoadError as error:
        return ModelPreload(model=choice, loaded=False, error=error.reason)
    return ModelPreload(
        model=choice,
        loaded=True,
        seconds=round(time.monotonic() - started, 1),
        context_length=loaded.context_length,
    )
