"""The vector index behind LangChain's `VectorStore` interface, chosen by `store.kind` and `store.uri`.

- `milvus` with a file path (the default, `FTLLM_DATA_DIR/rag/index.db`): Milvus Lite, embedded,
  persistent across restarts.
- `milvus` with a URL (`http://127.0.0.1:19530`): a Milvus server or cluster, the same code.
- `weaviate` with a URL: a Weaviate server; with no URL, Weaviate's embedded mode (it downloads
  its server binary on first use, so it needs internet access once).

Whatever the store, the record store (LangChain's SQL record manager, plus our keyword index and
document catalog) is one SQLite file beside it: next to the Milvus Lite file, or under
`FTLLM_DATA_DIR/rag/` for a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from tasks.core.config import data_dir, option, require

# What every chunk carries; a store with a fixed schema (Milvus) is created with exactly these.
METADATA_FIELDS = ("source", "page", "title", "chunk_id")


@dataclass
class StoreOptions:
    kind: Literal["milvus", "weaviate"] = option(
        "milvus", help="vector store: milvus (Lite file or server) or weaviate (server URL, or embedded)"
    )
    uri: str | None = option(
        None,
        help="milvus: a .db file path (Milvus Lite) or http://host:19530 (server); "
        "weaviate: http://host:8080, or empty for embedded mode. "
        "Default: FTLLM_DATA_DIR/rag/index.db (Milvus Lite)",
    )
    collection: str = option("pdf_chunks", help="collection (Milvus) or class (Weaviate) name")
    records: str | None = option(
        None,
        help="record store SQLite file; default: beside a Milvus Lite file, else "
        "FTLLM_DATA_DIR/rag/records-<host>-<port>-<collection>.db",
    )
    token_env: str | None = option(
        None, help="name of an environment variable holding the server's token or API key (never the secret itself)"
    )

    def __post_init__(self) -> None:
        require(
            bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,200}", self.collection)),
            "store.collection",
            f"must be letters, digits and underscores starting with a letter, got {self.collection!r}",
        )
        if self.kind == "milvus" and self.uri and "://" in self.uri:
            require(
                is_server_uri(self.uri), "store.uri", f"milvus takes a file path or an http(s) URL, got {self.uri!r}"
            )
        if self.kind == "weaviate" and self.uri:
            require(is_server_uri(self.uri), "store.uri", f"weaviate takes an http(s) URL, got {self.uri!r}")


def is_server_uri(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https", "tcp", "grpc")


def index_location(store: StoreOptions) -> str:
    """The Milvus Lite file (made absolute), or the server URL as configured."""
    if store.uri and is_server_uri(store.uri):
        return store.uri
    if store.kind == "weaviate":
        return str(data_dir() / "rag" / "weaviate")  # embedded Weaviate's data folder
    path = Path(store.uri).expanduser() if store.uri else data_dir() / "rag" / "index.db"
    return str(path.resolve())


def records_path(store: StoreOptions) -> Path:
    """The record store: an SQLite file beside the index."""
    if store.records:
        path = Path(store.records).expanduser().resolve()
    elif store.kind == "milvus" and not (store.uri and is_server_uri(store.uri)):
        index_file = Path(index_location(store))
        path = index_file.with_name(f"{index_file.stem}-records.db")
    elif store.uri and is_server_uri(store.uri):
        url = urlparse(store.uri)  # one record store per server and collection
        path = data_dir() / "rag" / f"records-{url.hostname}-{url.port or 'default'}-{store.collection}.db"
    else:
        path = data_dir() / "rag" / f"records-{store.collection}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _token(store: StoreOptions) -> str | None:
    import os

    if not store.token_env:
        return None
    value = os.environ.get(store.token_env)
    if not value:
        raise ValueError(f"store.token_env: environment variable {store.token_env} is not set")
    return value


# --- Milvus -----------------------------------------------------------------------------------


def _milvus_class():
    from langchain_milvus import Milvus

    class IdempotentMilvus(Milvus):
        """Milvus whose add_documents upserts when given ids.

        LangChain's `index()` adds a batch, then records it. Milvus does not enforce unique primary
        keys, so a plain insert retried after a crash between those two steps would store each
        chunk twice; an upsert makes the retry harmless.
        """

        def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
            ids = kwargs.get("ids")
            if ids and self.client.has_collection(self.collection_name):
                self.upsert(ids=list(ids), documents=documents)
                return list(ids)
            return super().add_documents(documents, **kwargs)

        def flush(self) -> None:
            """Persist what was written: a server killed before flushing loses unflushed rows."""
            if self.client.has_collection(self.collection_name):
                self.client.flush(self.collection_name)

    return IdempotentMilvus


class StoreUnavailable(RuntimeError):
    """The vector store cannot be opened; the message says why and what to do."""


def _milvus(store: StoreOptions, embeddings: Embeddings) -> VectorStore:
    from pymilvus.exceptions import MilvusException

    location = index_location(store)
    connection: dict[str, Any] = {"uri": location}
    if token := _token(store):
        connection["token"] = token
    if not is_server_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
    server = is_server_uri(location)
    try:
        return _open_milvus(store, embeddings, connection, server)
    except MilvusException as error:
        if server:
            raise StoreUnavailable(
                f"Milvus server {location} cannot be reached or refused the connection "
                f"({error.message}); is it running?"
            ) from None
        # Milvus Lite serves a file to one process at a time.
        raise StoreUnavailable(
            f"the Milvus Lite index {location} cannot be opened ({error.message}); another "
            "process (a chat app, a running pdf-index or rag-query) may have it open: Milvus "
            "Lite allows one process per file. Stop it, or use a Milvus server "
            "(store.uri=http://127.0.0.1:19530) for concurrent use"
        ) from None


def _open_milvus(store: StoreOptions, embeddings: Embeddings, connection: dict[str, Any], server: bool) -> VectorStore:
    return _milvus_class()(
        embedding_function=embeddings,
        collection_name=store.collection,
        connection_args=connection,
        # Normalized embeddings, cosine similarity: scores read as similarities in [-1, 1].
        index_params={
            "metric_type": "COSINE",
            "index_type": "HNSW" if server else "FLAT",
            **({"params": {"M": 16, "efConstruction": 200}} if server else {}),
        },
        search_params={"metric_type": "COSINE", **({"params": {"ef": 64}} if server else {})},
        auto_id=False,
        # Strong reads: a query right after an upsert sees it (the default, Session, is per client).
        consistency_level="Strong",
    )


# --- Weaviate ---------------------------------------------------------------------------------


def weaviate_class_name(collection: str) -> str:
    return collection[0].upper() + collection[1:]  # Weaviate class names start with a capital


def connect_weaviate(store: StoreOptions):
    """A Weaviate v4 client: a server URL (http port + gRPC port 50051), or embedded mode."""
    import weaviate
    from weaviate.classes.init import Auth

    token = _token(store)
    if not store.uri:
        return weaviate.connect_to_embedded(persistence_data_path=index_location(store))
    url = urlparse(store.uri)
    secure = url.scheme == "https"
    return weaviate.connect_to_custom(
        http_host=url.hostname or "127.0.0.1",
        http_port=url.port or (443 if secure else 8080),
        http_secure=secure,
        grpc_host=url.hostname or "127.0.0.1",
        grpc_port=50051,
        grpc_secure=secure,
        auth_credentials=Auth.api_key(token) if token else None,
    )


def _weaviate(store: StoreOptions, embeddings: Embeddings) -> VectorStore:
    from langchain_weaviate import WeaviateVectorStore

    return WeaviateVectorStore(
        client=connect_weaviate(store),
        index_name=weaviate_class_name(store.collection),
        text_key="text",
        embedding=embeddings,
        attributes=list(METADATA_FIELDS),
    )


# --- the one entry point ----------------------------------------------------------------------


def make_vector_store(store: StoreOptions, embeddings: Embeddings) -> VectorStore:
    return _weaviate(store, embeddings) if store.kind == "weaviate" else _milvus(store, embeddings)


def persist(vector_store: VectorStore) -> None:
    """Make every write durable before the run reports success (Milvus flush; Weaviate writes through)."""
    flush = getattr(vector_store, "flush", None)
    if callable(flush):
        flush()


def close(vector_store: VectorStore, store: StoreOptions | None = None) -> None:
    """Close the store's connection; for Milvus Lite also stop its file server, so another process can open it."""
    for name in ("_client", "client"):  # Weaviate keeps it in _client, langchain-milvus in client
        client = getattr(vector_store, name, None)
        if client is not None and hasattr(client, "close"):
            client.close()
            break
    if store is not None and store.kind == "milvus" and not is_server_uri(index_location(store)):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(index_location(store))


def similarity_search(
    vector_store: VectorStore, query: str, k: int, search: str = "similarity", fetch_k: int = 20
) -> list[tuple[Document, float | None]]:
    """Top-k chunks with their similarity (None for MMR, which re-orders by diversity)."""
    if search == "mmr":
        docs = vector_store.max_marginal_relevance_search(query, k=k, fetch_k=max(fetch_k, k))
        return [(doc, None) for doc in docs]
    return [(doc, float(score)) for doc, score in vector_store.similarity_search_with_score(query, k=k)]
