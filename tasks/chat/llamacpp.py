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
    threads: int = option(2, help="CPU threads llama.cpp decodes with")
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

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stop(self) -> None:
        self.server = None


def start_llamacpp(options: LlamaCppOptions) -> LlamaCppServer:
    """Load the base GGUF (+ adapter) into llama.cpp and start its server on 127.0.0.1."""
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
    log.info("llama.cpp server for %s on %s (%d slots)", model_path.name, url, options.parallel)
    return LlamaCppServer(server, url, options.alias, model_path, adapter_path, round(time.monotonic() - started, 2))
