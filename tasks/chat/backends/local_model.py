"""The local backend's chat model: a LangChain chat model generated in this process by `tasks.chat.generation`.

Each (model, adapter) is loaded once per process and shared, with its lock, by every chat model
made for it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from tasks.chat.generation import stream_reply
from tasks.chat.loading import LoadedModel, load_chat_model
from tasks.chat.prompts import build_prompt
from tasks.chat.sampling import SamplingSettings

_LOADED: dict[tuple[str, str | None], LoadedModel] = {}
_LOADING = threading.Lock()


def cached_chat_model(model: str, adapter: str | None = None) -> LoadedModel:
    """Load each (model, adapter) once per process; later calls share it (and its lock)."""
    key = (model, adapter)
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = load_chat_model(adapter or model)
        return _LOADED[key]


_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def to_chat_messages(messages: list[BaseMessage]) -> list[dict]:
    """LangChain messages as the {"role", "content"} dicts a chat template takes."""
    converted = []
    for index, message in enumerate(messages):
        role = _ROLES.get(message.type)
        if role is None:
            raise ValueError(
                f"messages[{index}]: the local model takes system, human and ai messages, not {message.type!r}"
            )
        converted.append({"role": role, "content": message.text})
    return converted


def _until_stop(deltas: Iterator[str], stop: list[str] | None) -> Iterator[str]:
    """Pass text deltas on up to the first stop string; a stop string may span several deltas."""
    if not stop:
        yield from deltas
        return
    held = ""  # text that may be the start of a stop string
    for delta in deltas:
        held += delta
        cuts = [held.find(s) for s in stop if s in held]
        if cuts:
            if min(cuts) > 0:
                yield held[: min(cuts)]
            return  # leaving the loop closes `deltas`, which ends generation at the next token
        keep = max((k for s in stop for k in range(len(s) - 1, 0, -1) if held.endswith(s[:k])), default=0)
        if len(held) > keep:
            yield held[: len(held) - keep]
            held = held[len(held) - keep :]
    if held:
        yield held


class LocalChatModel(BaseChatModel):
    """A chat model generated in this process by `tasks.chat.generation`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    model_name: str
    adapter: str | None = None
    settings: SamplingSettings

    @property
    def _llm_type(self) -> str:
        return "ftllm-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "adapter": self.adapter,
            "temperature": self.settings.temperature,
            "max_new_tokens": self.settings.max_new_tokens,
        }

    def _deltas(self, chat: list[dict], stop: list[str] | None) -> Iterator[str]:
        deltas = stream_reply(self._loaded(), chat, self.settings)
        try:
            yield from _until_stop(deltas, stop)
        finally:
            deltas.close()  # joins the generation thread at once, also when the caller stops early

    def _loaded(self) -> LoadedModel:
        return cached_chat_model(self.model_name, self.adapter)

    def _metadata(self, chat: list[dict], reply: str) -> tuple[dict, UsageMetadata]:
        loaded = self._loaded()
        prompt, _ = build_prompt(loaded.tokenizer, chat, loaded.context_length, self.settings.max_new_tokens)
        output = len(loaded.tokenizer.encode(reply, add_special_tokens=False))
        usage = UsageMetadata(input_tokens=len(prompt), output_tokens=output, total_tokens=len(prompt) + output)
        return {"model_name": self.adapter or self.model_name, "model_provider": "ftllm-local"}, usage

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        chat = to_chat_messages(messages)
        reply = []
        for text in self._deltas(chat, stop):
            reply.append(text)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
            if run_manager:
                run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk
        metadata, usage = self._metadata(chat, "".join(reply))
        yield ChatGenerationChunk(
            message=AIMessageChunk(content="", response_metadata=metadata, usage_metadata=usage, chunk_position="last")
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chat = to_chat_messages(messages)
        text = "".join(self._deltas(chat, stop))
        metadata, usage = self._metadata(chat, text)
        message = AIMessage(content=text, response_metadata=metadata, usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=message)])
