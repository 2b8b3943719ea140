"""The chat app's own llama.cpp server: its `llamacpp.*` options, started with a base GGUF and an adapter GGUF.

Several slots decode together (continuous batching), and a client that closes its stream frees
its slot. The app talks to it over HTTP like to any other OpenAI-compatible server
(`backends/openai.py`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.core.config import option, require
from tasks.core.defaults import SMOLLM2_PYPI
from tasks.core.llamacpp import start_llama_server
from tasks.core.models import gguf_file

log = logging.getLogger(__name__)


@dataclass
class LlamaCppOptions:
    """`llamacpp.*`: a llama.cpp server the app starts and offers in the model picker."""

    enabled: bool = option(False, help="start llama.cpp's OpenAI-compatible server and offer it in the model picker")
    model: str = option(SMOLLM2_PYPI, help="base model GGUF: pypi:PACKAGE/FILE.gguf or a .gguf file")
    adapter: str | None = option(
        None, help="LoRA adapter GGUF (written by export-gguf) applied to every reply; none: the base model alone"
    )
    alias: str = option("smollm2", help="the model name the server answers to (the picker shows it)")
    parallel: int = option(4, help="slots: replies decoded together (continuous batching)")
    context: int = option(8192, help="context tokens, split evenly between the slots")
    threads: int = option(1, help="CPU threads llama.cpp decodes with; leave a core to the app (docs/serving.md)")
    port: int = option(0, help="TCP port on 127.0.0.1; 0: any free port")

    def __post_init__(self) -> None:
        require(bool(self.alias.strip()), "llamacpp.alias", "must not be empty")
        require(self.parallel >= 1, "llamacpp.parallel", f"must be at least 1, got {self.parallel}")
        require(self.threads >= 1, "llamacpp.threads", f"must be at least 1, got {self.threads}")
        require(0 <= self.port < 65536, "llamacpp.port", f"must be in 0..65535, got {self.port}")
        require(
            self.context >= 256 * self.parallel,
            "llamacpp.context",
            f"{self.context} tokens leave less than 256 per slot for {self.parallel} slots",
        )
        require(
            self.adapter is None or Path(self.adapter).is_file(),
            "llamacpp.adapter",
            f"adapter GGUF not found: {self.adapter}",
        )


@dataclass
class LlamaCppServer:
    """A started server; `base_url` is the OpenAI API root (`.../v1`)."""

    server: object  # xllamacpp.Server: the server stops when the last reference goes
    url: str
    alias: str
    model_path: Path
    adapter_path: Path | None
    start_seconds: float
    warm_up_seconds: float = 0.0

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stop(self) -> None:
        self.server = None


def warm_up(url: str, alias: str) -> float:
    """One 1-token chat request, so that the first user does not pay for it; returns its seconds.

    The first request after loading touches the model's pages and sizes llama.cpp's compute
    buffers; it also leaves the chat template's default system prompt in a slot's prompt cache,
    which a new conversation then reuses.
    """
    import httpx

    started = time.monotonic()
    body = {"model": alias, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0.0}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=httpx.Timeout(120.0, connect=5.0))
    if response.status_code != 200:
        raise RuntimeError(
            f"llama.cpp's server at {url} failed its warm-up request: {response.status_code} {response.text}"
        )
    return round(time.monotonic() - started, 2)


def start_llamacpp(options: LlamaCppOptions) -> LlamaCppServer:
    """Load the base GGUF (+ adapter) into llama.cpp, start its server on 127.0.0.1 and warm it up."""
    model_path = gguf_file(options.model, "llamacpp.model")
    adapter_path = Path(options.adapter).resolve() if options.adapter else None
    started = time.monotonic()
    server, url = start_llama_server(
        model_path,
        [adapter_path] if adapter_path else [],
        alias=options.alias,
        parallel=options.parallel,
        context=options.context,
        threads=options.threads,
        port=options.port,
    )
    start_seconds = round(time.monotonic() - started, 2)
    warm_seconds = warm_up(url, options.alias)
    log.info(
        "llama.cpp server for %s on %s (%d slots, %d threads), warmed up in %.2f s",
        model_path.name,
        url,
        options.parallel,
        options.threads,
        warm_seconds,
    )
    return LlamaCppServer(server, url, options.alias, model_path, adapter_path, start_seconds, warm_seconds)
