"""LangChain chat models chosen by config: `make_chat_model(ChatModelOptions(...))`.

Every backend returns a `BaseChatModel`, so `prompt | model` chains, `invoke` and `stream` work
the same with each. `BACKENDS` is the one registry of providers: adding a backend is a module
beside `local`, `ollama` and `openai` that defines a `ChatBackend`, and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tasks.chat.backends import local, ollama, openai
from tasks.chat.backends.base import ChatBackend
from tasks.chat.sampling import BY_NAME
from tasks.core.config import option, require
from tasks.core.defaults import OLLAMA_DEFAULT_URL, SMOLLM2_PYPI
from tasks.publishing import ADAPTER_SCHEMES

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

BACKENDS: dict[str, ChatBackend] = {"local": local.BACKEND, "ollama": ollama.BACKEND, "openai": openai.BACKEND}
# The values `llm.provider` takes, as a Literal: the config loader checks them and --help-config lists them.
Provider = Literal[tuple(BACKENDS)]  # type: ignore[valid-type]
ADAPTER_LOADERS = [name for name, backend in BACKENDS.items() if backend.loads_adapters]


@dataclass
class ChatModelOptions:
    provider: Provider = option(
        "local",
        help="where answers are generated: " + " or ".join(f"{name} ({b.where})" for name, b in BACKENDS.items()),
    )
    model: str = option(
        SMOLLM2_PYPI,
        help="; ".join(f"{name}: {backend.model_help}" for name, backend in BACKENDS.items()),
    )
    adapter: str | None = option(
        None,
        help=f"{', '.join(ADAPTER_LOADERS)} only: publish URI of a LoRA adapter ({ADAPTER_SCHEMES}); "
        "its recorded base model is loaded, model is ignored",
    )
    base_url: str | None = option(
        None,
        help=f"ollama: server URL, default $OLLAMA_HOST, else {OLLAMA_DEFAULT_URL}; "
        "openai: the server's API root, e.g. http://127.0.0.1:8080/v1 (required)",
    )
    api_key_secret: str | None = option(
        None, help="openai: Prefect Secret block holding the server's API key; none: the server takes no key"
    )
    temperature: float = option(0.0, help="sampling temperature; 0 = greedy (deterministic answers)")
    max_new_tokens: int = option(256, help="longest answer, in tokens")

    def __post_init__(self) -> None:
        require(bool(self.model.strip()), "llm.model", "must not be empty")
        # The same ranges as the chat app's sliders (tasks/chat/sampling.py).
        BY_NAME["temperature"].check(self.temperature, "llm.temperature")
        BY_NAME["max_new_tokens"].check(self.max_new_tokens, "llm.max_new_tokens")
        require(
            self.adapter is None or BACKENDS[self.provider].loads_adapters,
            "llm.adapter",
            f"adapters are loaded by the {' or '.join(ADAPTER_LOADERS)} provider only "
            f"(the {self.provider} provider serves its own models)",
        )
        require(
            not BACKENDS[self.provider].needs_base_url or (self.base_url or "").startswith(("http://", "https://")),
            "llm.base_url",
            f"the {self.provider} provider needs the server's http(s) URL, e.g. http://127.0.0.1:8080/v1, "
            f"got {self.base_url!r}",
        )


def make_chat_model(options: ChatModelOptions) -> BaseChatModel:
    return BACKENDS[options.provider].make(options)


__all__ = ["BACKENDS", "ChatBackend", "ChatModelOptions", "make_chat_model"]
