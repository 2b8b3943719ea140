"""An in-memory vector store kind: LangChain's `InMemoryVectorStore` behind the `StoreKind` interface.

What a new store module provides, in a few lines. Registered under a test kind
(`monkeypatch.setitem(stores.STORES, "memory", memory.kind)`), it shows that the registry alone
decides which store indexing and retrieval use. Collections live as long as the object, so every
open of a collection sees what an earlier one wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore

from tasks.rag.config import StoreOptions
from tasks.rag.stores import OpenStore, StoreKind


@dataclass
class MemoryStores:
    records_folder: Path
    collections: dict[str, InMemoryVectorStore] = field(default_factory=dict)
    opened: list[str] = field(default_factory=list)  # collections, in the order they were opened
    closed: list[str] = field(default_factory=list)

    @property
    def kind(self) -> StoreKind:
        return StoreKind(open=self.open, location=self.location, default_records=self.default_records)

    def open(self, options: StoreOptions, embeddings: Embeddings) -> OpenStore:
        self.opened.append(options.collection)
        vectors = self.collections.setdefault(options.collection, InMemoryVectorStore(embeddings))
        return OpenStore(vectors, close=lambda: self.closed.append(options.collection))

    def location(self, options: StoreOptions) -> str:
        return f"memory://{options.collection}"

    def default_records(self, options: StoreOptions) -> Path:
        return self.records_folder / f"records-{options.collection}.db"
