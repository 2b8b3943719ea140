"""What RAG needs from a vector store, whatever its kind: the interface each store module fills in.

A kind of store is a `StoreKind`: plain functions that say where its data lives and how to open
it. An opened store is an `OpenStore`: LangChain's `VectorStore` (what `index()` writes to and
retrieval searches) plus how to make its writes durable and how to let it go. The record store
(LangChain's record manager, our keyword index and document catalog) is one SQLite file beside the
index, whatever the kind: each kind says where by default.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from tasks.core.config import data_dir

if TYPE_CHECKING:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore

    from tasks.rag.config import StoreOptions

# What every chunk carries; a store with a fixed schema (Milvus) is created with exactly these.
METADATA_FIELDS = ("source", "page", "title", "chunk_id")


class StoreUnavailable(RuntimeError):
    """The vector store cannot be opened; the message says why and what to do."""


def nothing() -> None:
    """For a store that writes through (nothing to flush) or holds nothing to release."""


def any_uri(options: StoreOptions) -> None:
    """For a store that accepts whatever `store.uri` says."""


@dataclass
class OpenStore:
    vectors: VectorStore
    flush: Callable[[], None] = nothing  # every write durable before the run reports success
    close: Callable[[], None] = nothing  # the connection, and whatever lets another process open the index
    # Passed to similarity_search_with_score: what makes this store's similarity search a pure
    # vector search (retrieval fuses keywords itself, so a store's own keyword part would count twice).
    search_kwargs: dict[str, Any] = field(default_factory=dict)

    def search(
        self, query: str, k: int, search: str = "similarity", fetch_k: int = 20
    ) -> list[tuple[Document, float | None]]:
        """Top-k chunks with their similarity (None for MMR, which re-orders by diversity)."""
        if search == "mmr":
            docs = self.vectors.max_marginal_relevance_search(query, k=k, fetch_k=max(fetch_k, k))
            return [(doc, None) for doc in docs]
        return [
            (doc, float(score))
            for doc, score in self.vectors.similarity_search_with_score(query, k=k, **self.search_kwargs)
        ]


@dataclass(frozen=True)
class StoreKind:
    open: Callable[[StoreOptions, Embeddings], OpenStore]  # raises StoreUnavailable, saying what to do
    location: Callable[[StoreOptions], str]  # where the index lives, as the report and errors name it
    default_records: Callable[[StoreOptions], Path]  # the record store when `store.records` is not set
    check: Callable[[StoreOptions], None] = any_uri  # refuses a `store.uri` this kind cannot use (ConfigError)


# --- helpers the store modules share ----------------------------------------------------------


def is_server_uri(uri: str | None) -> bool:
    return bool(uri) and urlparse(uri).scheme in ("http", "https", "tcp", "grpc")


def server_records(options: StoreOptions) -> Path:
    """One record store per server and collection."""
    url = urlparse(options.uri)
    return data_dir() / "rag" / f"records-{url.hostname}-{url.port or 'default'}-{options.collection}.db"


def token(options: StoreOptions) -> str | None:
    """The server's token or API key, read from the environment variable `store.token_env` names."""
    if not options.token_env:
        return None
    value = os.environ.get(options.token_env)
    if not value:
        raise ValueError(f"store.token_env: environment variable {options.token_env} is not set")
    return value
