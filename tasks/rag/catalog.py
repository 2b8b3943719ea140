"""The document catalog and the keyword index, in the record store's SQLite file.

Per document: the fingerprint of what was indexed (file hash + chunking + embedding model), whether
it was indexed completely, and an FTS5 (BM25) keyword index of its chunks for hybrid retrieval.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from langchain_core.documents import Document

from tasks.rag.keywords import keyword_terms


@dataclass
class CatalogEntry:
    source: str
    fingerprint: str | None
    complete: bool
    pages: int
    chunks: int


class Catalog:
    """Per-document state and an FTS5 (BM25) keyword index of the chunks, in the record store's SQLite file."""

    def __init__(self, path: str | Path, namespace: str):
        self.path, self.namespace = str(path), namespace
        self._local = threading.local()
        with self._db() as db:
            db.executescript("""
                CREATE TABLE IF NOT EXISTS documents (
                    namespace TEXT NOT NULL, source TEXT NOT NULL, fingerprint TEXT,
                    complete INTEGER NOT NULL DEFAULT 0, pages INTEGER NOT NULL DEFAULT 0,
                    chunks INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,
                    PRIMARY KEY (namespace, source));
                -- porter + unicode61 without diacritics: "Räume" finds "raume", "indexes" finds "index".
                CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
                    text, namespace UNINDEXED, source UNINDEXED, page UNINDEXED, title UNINDEXED,
                    chunk_id UNINDEXED, tokenize = 'porter unicode61 remove_diacritics 2');
            """)

    def _db(self) -> sqlite3.Connection:
        # One connection per thread: sqlite3 connections must not cross threads.
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        return db

    def get(self, source: str) -> CatalogEntry | None:
        row = (
            self._db()
            .execute(
                "SELECT source, fingerprint, complete, pages, chunks FROM documents WHERE namespace=? AND source=?",
                (self.namespace, source),
            )
            .fetchone()
        )
        return CatalogEntry(row[0], row[1], bool(row[2]), row[3], row[4]) if row else None

    def sources(self) -> list[str]:
        rows = self._db().execute("SELECT source FROM documents WHERE namespace=? ORDER BY source", (self.namespace,))
        return [row[0] for row in rows]

    def begin(self, source: str) -> None:
        """Known before anything is written, so a crash cannot leave chunks that no catalog row names."""
        with self._db() as db:
            db.execute(
                "INSERT INTO documents(namespace, source, complete, updated) VALUES (?, ?, 0, ?) "
                "ON CONFLICT(namespace, source) DO UPDATE SET complete=0, updated=excluded.updated",
                (self.namespace, source, time.time()),
            )

    def complete(self, source: str, fingerprint: str, pages: int, chunks: list[Document]) -> None:
        with self._db() as db:  # one transaction: the keyword rows and the completion mark together
            db.execute("DELETE FROM chunks_fts WHERE namespace=? AND source=?", (self.namespace, source))
            db.executemany(
                "INSERT INTO chunks_fts(text, namespace, source, page, title, chunk_id) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        c.page_content,
                        self.namespace,
                        source,
                        c.metadata["page"],
                        c.metadata["title"],
                        c.metadata["chunk_id"],
                    )
                    for c in chunks
                ],
            )
            db.execute(
                "UPDATE documents SET fingerprint=?, complete=1, pages=?, chunks=?, updated=? "
                "WHERE namespace=? AND source=?",
                (fingerprint, pages, len(chunks), time.time(), self.namespace, source),
            )

    def remove(self, source: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM chunks_fts WHERE namespace=? AND source=?", (self.namespace, source))
            db.execute("DELETE FROM documents WHERE namespace=? AND source=?", (self.namespace, source))

    def keyword_search(self, query: str, k: int) -> list[tuple[Document, float]]:
        """BM25 top-k (FTS5's bm25(), negated so that higher is better); any query term may match."""
        terms = keyword_terms(query)
        if not terms:
            return []
        rows = (
            self._db()
            .execute(
                "SELECT text, source, page, title, chunk_id, bm25(chunks_fts) FROM chunks_fts "
                "WHERE chunks_fts MATCH ? AND namespace=? ORDER BY bm25(chunks_fts) LIMIT ?",
                (" OR ".join(terms), self.namespace, k),
            )
            .fetchall()
        )
        return [
            (
                Document(
                    page_content=text, metadata={"source": source, "page": int(page), "title": title, "chunk_id": cid}
                ),
                -float(score),
            )
            for text, source, page, title, cid, score in rows
        ]

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
