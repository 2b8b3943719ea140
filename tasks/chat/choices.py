"""What the model picker offers: the configured models, the adapters in the MLflow registry, Documents."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tasks.chat.config import ChatAppConfig
from tasks.publishing import is_adapter_uri, registered_adapter_uris

log = logging.getLogger(__name__)

DOCUMENTS = "Documents"  # the picker's value for answers from rag-query


@dataclass(frozen=True)
class Endpoint:
    """A model on an OpenAI-compatible server; its picker value is MODEL@URL."""

    model: str
    base_url: str

    @property
    def choice(self) -> str:
        return f"{self.model}@{self.base_url}"


def endpoint_of(choice: str) -> Endpoint | None:
    """The endpoint a picker value names, or None for models, adapters and Documents."""
    model, _, url = choice.partition("@")
    return Endpoint(model, url) if url.startswith(("http://", "https://")) else None


def model_choices(config: ChatAppConfig) -> list[str]:
    """OpenAI-compatible endpoints, config models, registry adapters, then Documents (when configured).

    The first is the picker's default: a configured server (e.g. the app's own llama.cpp) comes
    before the in-process models, which stay as the fallback."""
    choices = list(dict.fromkeys(config.endpoints + config.models))
    if config.list_registry:
        try:
            choices.extend(c for c in registered_adapter_uris(config.registry_versions) if c not in choices)
        except Exception as error:  # a down tracking server must not keep the app from serving
            log.warning("could not list adapters from the MLflow registry: %s", error)
    if config.documents:
        choices.append(DOCUMENTS)
    return choices


def choice_label(choice: str) -> str:
    if choice == DOCUMENTS:
        return "Documents (answers from your PDFs, with cited pages)"
    if is_adapter_uri(choice):
        return f"adapter: {choice}"
    endpoint = endpoint_of(choice)
    if endpoint:
        return f"server: {endpoint.model} at {endpoint.base_url}"
    return f"model: {choice}"


def labelled_choices(choices: list[str]) -> list[tuple[str, str]]:
    """(label, value) pairs, as a Gradio dropdown takes them."""
    return [(choice_label(c), c) for c in choices]
