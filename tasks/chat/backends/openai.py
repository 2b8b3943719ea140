"""The OpenAI-compatible backend: any server that speaks `/v1/chat/completions`, through langchain-openai.

llama.cpp's server (what `chat-app` starts with `llamacpp.enabled`), vLLM (`--enable-lora`: the
adapter is a model name) and Ollama's `/v1` all speak it. Replies stream; a caller that stops
reading closes the stream, and closing it closes the HTTP response, which is how these servers
learn to end the request and free its slot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.chat.backends.base import ChatBackend
from tasks.core.secrets import secret_string

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from tasks.chat.backends import ChatModelOptions

# The openai client insists on a key; servers started without one (llama.cpp, vLLM, Ollama by
# default) ignore the header.
NO_KEY = "no-key"
# A chat turn fails fast on a down server instead of retrying behind the user's back.
CONNECT_TIMEOUT_S = 5.0


def make_openai_chat_model(options: ChatModelOptions) -> BaseChatModel:
    import httpx
    from langchain_openai import ChatOpenAI  # its client is needed only when this backend is chosen

    api_key = secret_string(options.api_key_secret, "llm.api_key_secret") if options.api_key_secret else NO_KEY
    return ChatOpenAI(
        model=options.model,
        base_url=options.base_url,
        api_key=api_key,
        temperature=options.temperature,
        max_tokens=options.max_new_tokens,
        streaming=True,
        stream_usage=True,
        max_retries=0,
        timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),  # a long reply may take minutes
    )


BACKEND = ChatBackend(
    make=make_openai_chat_model,
    where="an OpenAI-compatible server: llama.cpp, vLLM, Ollama /v1",
    model_help="the server's model name (llama.cpp: its alias; vLLM: a served model or LoRA name)",
    needs_base_url=True,
)
