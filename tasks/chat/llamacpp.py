"""llama.cpp's OpenAI-compatible server (the `xllamacpp` wheel) with a base GGUF and a LoRA adapter GGUF.

The server runs llama.cpp's own HTTP server in this process, on its own threads: several slots
decode together (continuous batching), and a client that closes its stream frees its slot. The
chat app talks to it over HTTP like to any other OpenAI-compatible server (`backends/openai.py`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.core.config import option, require
from tasks.core.defaults import SMOLLM2_PYPI
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
    import xllamacpp

    model_path = gguf_file(options.model, "llamacpp.model")
    params = xllamacpp.CommonParams()
    params.model.path = str(model_path)
    params.model_alias = {options.alias}
    params.n_ctx = options.context
    params.n_parallel = options.parallel
    params.cont_batching = True
    params.use_jinja = True  # the GGUF's own chat template, as transformers renders it (with its default system prompt)
    params.cpuparams.n_threads = options.threads
    params.cpuparams_batch.n_threads = options.threads
    params.port = options.port
    params.endpoint_metrics = True  # /metrics: tokens decoded, requests processing (tests, benchmarks)
    params.verbosity = -1
    adapter_path = None
    if options.adapter:
        adapter_path = Path(options.adapter).resolve()
        adapter = xllamacpp.CommonAdapterLoraInfo()
        adapter.path = str(adapter_path)
        adapter.scale = 1.0
        params.lora_adapters = [adapter]
    started = time.monotonic()
    try:
        server = xllamacpp.Server(params)
    except Exception as error:  # llama.cpp reports a bad file or adapter as a RuntimeError
        what = f"{model_path}" + (f" + adapter {adapter_path}" if adapter_path else "")
        raise RuntimeError(f"llama.cpp could not serve {what}: {error}") from error
    url = server.listening_address.rstrip("/")
    log.info("llama.cpp server for %s on %s (%d slots)", model_path.name, url, options.parallel)
    return LlamaCppServer(server, url, options.alias, model_path, adapter_path, round(time.monotonic() - started, 2))
