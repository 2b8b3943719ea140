"""Keep the index in step with the sources, one document at a time, incrementally.

Three stores stay in step, all keyed by a document's `source`:
- the vector store (stores/): one vector per chunk;
- LangChain's SQL record manager: a content hash per chunk, so `index()` embeds only new chunks,
  skips unchanged ones and deletes a changed document's stale chunks;
- the catalog (catalog.py, the same database): per document the fingerprint of what was
  indexed and its chunks' keyword index. A document is marked complete only after all three were
  written, so a run that crashed half-way is finished by the next one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStore

from tasks.rag.catalog import Catalog, CatalogEntry
from tasks.rag.config import ChunkOptions, EmbeddingOptions
from tasks.rag.embeddings import embedding_model_name
from tasks.rag.pdfs import ExtractedPdf

STATUSES = ("indexed", "unchanged", "replaced", "deleted", "failed")
INDEXED = ("indexed", "unchanged", "replaced")  # the statuses of a document that is in the index
KEY_ENCODER = "sha256"  # how LangChain's index API hashes a chunk into its id (its SHA-1 default warns)


@dataclass
class DocumentReport:
    source: str
    status: str  # one of STATUSES
    reason: str = ""
    pages: int = 0
    chunks: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status,
            "reason": self.reason,
            "pages": self.pages,
            "chunks": self.chunks,
            "seconds": round(self.seconds, 3),
        }


def fingerprint(file_sha256: str, chunk: ChunkOptions, embeddings: EmbeddingOptions) -> str:
    """Changes when the file, the chunking or the embedding model changes: then the document is redone."""
    recipe = json.dumps(
        {"file": file_sha256, "chunk": asdict(chunk), "embed": embedding_model_name(embeddings)}, sort_keys=True
    )
    return hashlib.sha256(recipe.encode()).hexdigest()


def make_record_manager(records_url: str, namespace: str):
    """LangChain's record manager in the record store (a SQLAlchemy URL: SQLite or PostgreSQL)."""
    from langchain_classic.indexes import SQLRecordManager
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    manager = SQLRecordManager(namespace, db_url=records_url, engine_kwargs={"pool_pre_ping": True})
    try:
        manager.create_schema()
    except (IntegrityError, ProgrammingError):  # another indexer created it at the same moment
        manager.create_schema()
    return manager


def is_unchanged(catalog: Catalog, source: str, new_fingerprint: str) -> CatalogEntry | None:
    """The catalog entry when this exact document was completely indexed before, else None."""
    entry = catalog.get(source)
    return entry if entry and entry.complete and entry.fingerprint == new_fingerprint else None


def upsert_document(
    doc: ExtractedPdf,
    chunks: list[Document],
    new_fingerprint: str,
    vector_store: VectorStore,
    record_manager,
    catalog: Catalog,
) -> DocumentReport:
    """Add the document's new chunks, delete its stale ones (LangChain's index API), then mark it complete."""
    from langchain_classic.indexes import index

    if not chunks:
        return DocumentReport(doc.source, "failed", "no chunks: the text is empty after cleaning", pages=doc.page_count)
    before = catalog.get(doc.source)
    catalog.begin(doc.source)
    result = index(
        chunks,
        record_manager,
        vector_store,
        cleanup="incremental",
        source_id_key="source",
        batch_size=256,
        key_encoder=KEY_ENCODER,
    )
    catalog.complete(doc.source, new_fingerprint, doc.page_count, chunks)
    if before is None:
        status, reason = "indexed", ""
    elif before.complete and before.fingerprint != new_fingerprint:
        status, reason = "replaced", f"{result['num_added']} new chunks, {result['num_deleted']} removed"
    elif not before.complete:
        status, reason = "indexed", "finished an interrupted earlier run"
    else:  # same fingerprint, complete: only reached when the caller skipped the fast path
        status, reason = "unchanged", ""
    return DocumentReport(doc.source, status, reason, pages=doc.page_count, chunks=len(chunks))


def delete_document(source: str, vector_store: VectorStore, record_manager, catalog: Catalog) -> DocumentReport:
    """Remove every chunk of a document that is no longer among the sources."""
    entry = catalog.get(source)
    keys = record_manager.list_keys(group_ids=[source])
    if keys:
        vector_store.delete(keys)
        record_manager.delete_keys(keys)
    catalog.remove(source)
    return DocumentReport(
        source, "deleted", "no longer among the sources", pages=entry.pages if entry else 0, chunks=len(keys)
    )
