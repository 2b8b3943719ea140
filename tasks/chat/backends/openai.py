"""The OpenAI-compatible backend: any server that speaks `/v1/chat/completions`, through langchain-openai.

llama.cpp's server (what `chat-app` starts with `llamacpp.enabled`), vLLM (`--enable-lora`: the
adapter is a model name) and Ollama's `/v1` all speak it. Replies stream; a caller that stops
reading closes the stream, and closing it closes the HTTP response, which is how these servers
learn to end the request and free its slot.

One pair of HTTP clients (sync and async) per server URL serves every chat model made for it: the
chat app makes a chat model per turn, and langchain-openai builds two fresh httpx clients (each
with its TLS context) for every chat model whose timeout is an `httpx.Timeout`, as ours is; that
cost tenths of a second of CPU, under the GIL, before each turn's request went out.
"""

from __future__ import annotations

import threading
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
# No connection is kept between requests: llama.cpp's server closes the connection after a
# streamed reply, and a request sent on a pooled connection it is closing fails ("Server
# disconnected without sending a response") instead of being retried (max_retries=0).
# A new connection on 127.0.0.1 or a LAN costs far less than a token.
NO_KEEPALIVE = 0

_clients: dict[str, tuple] = {}
_clients_lock = threading.Lock()


def request_timeout():
    """Fail fast on a server that does not answer; no limit on a reply, which may take minutes."""
    import httpx

    return httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)


def http_clients(base_url: str):
    """The process's shared (httpx.Client, httpx.AsyncClient) for the server at `base_url`."""
    import httpx

    with _clients_lock:
        clients = _clients.get(base_url)
        if clients is None or clients[0].is_closed or clients[1].is_closed:
            timeout = request_timeout()
            limits = httpx.Limits(max_keepalive_connections=NO_KEEPALIVE, max_connections=None)
            clients = _clients[base_url] = (
                httpx.Client(timeout=timeout, limits=limits),
                httpx.AsyncClient(timeout=timeout, limits=limits),
            )
        return clients


def make_openai_chat_model(options: ChatModelOptions) -> BaseChatModel:
    from langchain_openai import ChatOpenAI  # its client is needed only when this backend is chosen

    sync_client, async_client = http_clients(options.base_url)
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
        timeout=request_timeout(),
        http_client=sync_client,
        http_async_client=async_client,
    )


BACKEND = ChatBackend(
    make=make_openai_chat_model,
    where="an OpenAI-compatible server: llama.cpp, vLLM, Ollama /v1",
    model_help="the server's model name (llama.cpp: its alias; vLLM: a served model or LoRA name)",
    needs_base_url=True,
)
