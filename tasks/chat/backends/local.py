"""The local backend: a LangChain chat model generated in this process (`local_model.py`).

The model class lives in its own module, imported when this backend is chosen: the registry is
read by every config (a RAG index run too), and the class pulls in LangChain's model layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.chat.backends.base import ChatBackend

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from tasks.chat.backends import ChatModelOptions


def make_local_chat_model(options: ChatModelOptions) -> BaseChatModel:
    from tasks.chat.backends.local_model import LocalChatModel
    from tasks.chat.sampling import SamplingSettings

    settings = SamplingSettings(temperature=options.temperature, max_new_tokens=options.max_new_tokens)
    return LocalChatModel(model_name=options.model, adapter=options.adapter, settings=settings)


BACKEND = ChatBackend(
    make=make_local_chat_model,
    where="transformers, in this process",
    model_help="a model name (Hub id, folder, pypi:PACKAGE/FILE.gguf)",
    loads_adapters=True,
)
