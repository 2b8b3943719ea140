"""RAG over PDFs: fetch, extract, chunk, embed, store (Milvus Lite, Milvus, Weaviate), retrieve, answer.

Other areas use only what is named here. The names are imported when first used: every module of
this package imports the package first, and a worker process that only extracts pages must not
pay for the answer chain (chat models, LangChain) on its way in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.rag.answer import answer_question
    from tasks.rag.config import RagConfig

_EXPORTS = {"RagConfig": "tasks.rag.config", "answer_question": "tasks.rag.answer"}

__all__ = ["RagConfig", "answer_question"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
