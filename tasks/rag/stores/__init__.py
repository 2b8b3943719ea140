"""Vector stores by `store.kind`: one module per kind, one line per kind in `STORES`.

A kind is a `StoreKind` (base.py): how to open it for an embeddings model, where its index and its
record store live, which `store.uri` it accepts. Adding a store is a module that builds one (see
milvus.py) and its line below; `store.kind` accepts every kind named here, and nothing else in RAG
names a kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tasks.rag.stores import milvus, weaviate
from tasks.rag.stores.base import OpenStore, StoreKind, StoreUnavailable

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

    from tasks.rag.config import StoreOptions

STORES: dict[str, StoreKind] = {
    "milvus": milvus.STORE,
    "weaviate": weaviate.STORE,
}
DEFAULT_KIND = "milvus"  # a Milvus Lite file: embedded, nothing to install or start


def open_store(options: StoreOptions, embeddings: Embeddings) -> OpenStore:
    return STORES[options.kind].open(options, embeddings)


def index_location(options: StoreOptions) -> str:
    return STORES[options.kind].location(options)


def records_url(options: StoreOptions) -> str:
    """The record store as a SQLAlchemy URL: `store.records` (a database URL or a SQLite file), else
    the SQLite file where the kind keeps it by default."""
    if options.records and "://" in options.records:
        scheme, rest = options.records.split("://", 1)
        # psycopg 3 is the driver installed; SQLAlchemy's bare postgresql:// means psycopg2.
        return f"postgresql+psycopg://{rest}" if scheme in ("postgres", "postgresql") else options.records
    path = (
        Path(options.records).expanduser().resolve()
        if options.records
        else STORES[options.kind].default_records(options)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


__all__ = [
    "DEFAULT_KIND",
    "STORES",
    "OpenStore",
    "StoreKind",
    "StoreUnavailable",
    "index_location",
    "open_store",
    "records_url",
]
