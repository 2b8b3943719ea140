"""The Ollama backend: a model that an Ollama server has pulled, through langchain-ollama."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.chat.backends.base import ChatBackend
from tasks.core.defaults import ollama_base_url

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from tasks.chat.backends import ChatModelOptions


def make_ollama_chat_model(options: ChatModelOptions) -> BaseChatModel:
    from langchain_ollama import ChatOllama  # its client is needed only when this backend is chosen

    return ChatOllama(
        model=options.model,
        base_url=ollama_base_url(options.base_url),
        temperature=options.temperature,
        num_predict=options.max_new_tokens,
    )


BACKEND = ChatBackend(
    make=make_ollama_chat_model,
    where="a server",
    model_help="a model the server has pulled, e.g. llama3.1",
)
