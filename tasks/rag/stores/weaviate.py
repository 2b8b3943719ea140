"""Weaviate: a server URL (`http://host:8080`, gRPC on port 50051), or with no URL Weaviate's
embedded mode (it downloads its server binary on first use, so it needs internet access once).

Its record store lives under `FTLLM_DATA_DIR/rag/`, one per server (or embedded data) and collection.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from tasks.core.config import data_dir, require
from tasks.rag.stores.base import METADATA_FIELDS, OpenStore, StoreKind, is_server_uri, server_records, token

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

    from tasks.rag.config import StoreOptions


VECTOR_ONLY = 1.0  # Weaviate's hybrid alpha: 1 = vector search only, 0 = BM25 only


def check(options: StoreOptions) -> None:
    if options.uri:
        require(is_server_uri(options.uri), "store.uri", f"weaviate takes an http(s) URL, got {options.uri!r}")


def location(options: StoreOptions) -> str:
    """The server URL, or embedded Weaviate's data folder."""
    return options.uri or str(data_dir() / "rag" / "weaviate")


def default_records(options: StoreOptions) -> Path:
    return server_records(options) if options.uri else data_dir() / "rag" / f"records-{options.collection}.db"


def class_name(collection: str) -> str:
    return collection[0].upper() + collection[1:]  # Weaviate class names start with a capital


def connect(options: StoreOptions):
    """A Weaviate v4 client: a server URL (http port + gRPC port 50051), or embedded mode."""
    import weaviate
    from weaviate.classes.init import Auth

    secret = token(options)
    if not options.uri:
        return weaviate.connect_to_embedded(persistence_data_path=location(options))
    url = urlparse(options.uri)
    secure = url.scheme == "https"
    return weaviate.connect_to_custom(
        http_host=url.hostname or "127.0.0.1",
        http_port=url.port or (443 if secure else 8080),
        http_secure=secure,
        grpc_host=url.hostname or "127.0.0.1",
        grpc_port=50051,
        grpc_secure=secure,
        auth_credentials=Auth.api_key(secret) if secret else None,
    )


def open_weaviate(options: StoreOptions, embeddings: Embeddings) -> OpenStore:
    from langchain_weaviate import WeaviateVectorStore

    client = connect(options)
    vectors = WeaviateVectorStore(
        client=client,
        index_name=class_name(options.collection),
        text_key="text",
        embedding=embeddings,
        attributes=list(METADATA_FIELDS),
    )
    # langchain-weaviate's similarity search is Weaviate's hybrid query (BM25 + vectors, alpha 0.75 by
    # the server's default); alpha 1 makes it vectors only, so the BM25 ranking retrieval fuses in counts once.
    return OpenStore(vectors, close=client.close, search_kwargs={"alpha": VECTOR_ONLY})  # writes go through


STORE = StoreKind(open=open_weaviate, location=location, default_records=default_records, check=check)
