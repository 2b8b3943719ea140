"""What a chat model backend is: one way to turn `ChatModelOptions` into a LangChain chat model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from tasks.chat.backends import ChatModelOptions


@dataclass(frozen=True)
class ChatBackend:
    make: Callable[[ChatModelOptions], BaseChatModel]
    where: str  # where answers are generated, for the help of `llm.provider`
    model_help: str  # what `llm.model` names with this backend
    loads_adapters: bool = False  # whether `llm.adapter` (a LoRA adapter's publish URI) is taken
    needs_base_url: bool = False  # whether `llm.base_url` must name the server (no default to fall back on)
