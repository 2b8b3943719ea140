"""Starting llama.cpp's server (the `xllamacpp` wheel) in this process: a base GGUF plus LoRA adapter GGUFs.

The chat app serves from it (`tasks/chat/llamacpp.py`); the GGUF export checks its files with it
(`tasks/publishing/export/`). llama.cpp runs its own HTTP server on its own threads, on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def start_llama_server(
    model: Path,
    adapters: list[Path] = (),
    alias: str = "model",
    parallel: int = 1,
    context: int = 4096,
    threads: int = 1,
    port: int = 0,
    api_keys: list[str] = (),
) -> tuple[Any, str]:
    """Start the server; returns (the xllamacpp.Server, its URL). It stops when the object is dropped.

    `context` is split evenly between the `parallel` slots; port 0 takes any free port.
    """
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.model_alias = {alias}
    params.n_ctx = context
    params.n_parallel = parallel
    params.cont_batching = True  # slots join and leave the running batch between tokens
    params.use_jinja = True  # the GGUF's own chat template, as transformers renders it (with its default system prompt)
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.port = port
    params.endpoint_metrics = True  # /metrics: tokens decoded, requests processing
    params.verbosity = -1
    params.api_keys = list(api_keys)  # none: the server takes requests without a key
    loras = []
    for path in adapters:
        lora = xllamacpp.CommonAdapterLoraInfo()
        lora.path, lora.scale = str(path), 1.0
        loras.append(lora)
    params.lora_adapters = loras
    try:
        server = xllamacpp.Server(params)
    except Exception as error:  # llama.cpp reports a bad model or adapter file as a RuntimeError
        files = " + ".join(str(p) for p in [model, *adapters])
        raise RuntimeError(f"llama.cpp could not load {files}: {error}") from error
    return server, server.listening_address.rstrip("/")
