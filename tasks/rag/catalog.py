"""The document catalog and the keyword index, in the record store's database.

Per document: the fingerprint of what was indexed (file hash + chunking + embedding model), whether
it was indexed completely, and a keyword index of its chunks for hybrid retrieval (keywords.py).
The record store is any SQLAlchemy URL: a SQLite file (the default) or PostgreSQL, which every
indexer and query server of a shared deployment reaches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from langchain_core.documents import Document

from tasks.rag.keywords import KEYWORD_INDEXES


class RecordStoreUnavailable(RuntimeError):
    """The record store cannot be opened; the message names its URL, never its password."""


@dataclass
class CatalogEntry:
    source: str
    fingerprint: str | None
    complete: bool
    pages: int
    chunks: int


def shown_url(url: str) -> str:
    """The URL as messages and reports may show it: the password masked (a file path as it is)."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True) if "://" in url else url


def open_engine(url: str):
    """An engine whose database answered: RecordStoreUnavailable, naming the URL, when it does not."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    try:
        parsed = make_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        engine = create_engine(
            url, pool_pre_ping=True, **({"connect_args": {"timeout": 30}} if sqlite else {"pool_size": 4})
        )
    except (ArgumentError, NoSuchModuleError) as error:
        raise RecordStoreUnavailable(f"store.records: cannot use {url.split('://')[0]}:// URLs ({error})") from None
    if sqlite:
        # WAL: readers (a chat app) do not block the indexer, nor it them.
        event.listen(engine, "connect", lambda db, _: db.execute("PRAGMA journal_mode=WAL"))
    try:
        with engine.connect():
            pass
    except OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
        if parsed.password:
            reason = reason.replace(parsed.password, "***")
        engine.dispose()
        raise RecordStoreUnavailable(
            f"the record store {shown_url(url)} cannot be reached ({reason}); is the database running?"
        ) from None
    return engine


class Catalog:
    """Per-document state and the keyword index of the chunks, in the record store at `url`."""

    def __init__(self, url: str, namespace: str):
        from sqlalchemy import text

        self.url, self.namespace = url, namespace
        self.engine = open_engine(url)
        self.keywords = KEYWORD_INDEXES[self.engine.dialect.name]()
        with self.engine.begin() as db:
            self.keywords.create(db, namespace)
            db.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS documents ("
                    "namespace TEXT NOT NULL, source TEXT NOT NULL, fingerprint TEXT, "
                    "complete INTEGER NOT NULL DEFAULT 0, pages INTEGER NOT NULL DEFAULT 0, "
                    "chunks INTEGER NOT NULL DEFAULT 0, updated DOUBLE PRECISION NOT NULL, "
                    "PRIMARY KEY (namespace, source))"
                )
            )

    def _read(self, sql: str, **params):
        from sqlalchemy import text

        with self.engine.connect() as db:
            return db.execute(text(sql), {"ns": self.namespace, **params}).fetchall()

    def get(self, source: str) -> CatalogEntry | None:
        rows = self._read(
            "SELECT source, fingerprint, complete, pages, chunks FROM documents WHERE namespace=:ns AND source=:source",
            source=source,
        )
        return CatalogEntry(rows[0][0], rows[0][1], bool(rows[0][2]), rows[0][3], rows[0][4]) if rows else None

    def sources(self) -> list[str]:
        return [row[0] for row in self._read("SELECT source FROM documents WHERE namespace=:ns ORDER BY source")]

    def begin(self, source: str) -> None:
        """Known before anything is written, so a crash cannot leave chunks that no catalog row names."""
        from sqlalchemy import text

        with self.engine.begin() as db:
            db.execute(
                text(
                    "INSERT INTO documents(namespace, source, complete, updated) VALUES (:ns, :source, 0, :now) "
                    "ON CONFLICT(namespace, source) DO UPDATE SET complete=0, updated=excluded.updated"
                ),
                {"ns": self.namespace, "source": source, "now": time.time()},
            )

    def complete(self, source: str, fingerprint: str, pages: int, chunks: list[Document]) -> None:
        from sqlalchemy import text

        with self.engine.begin() as db:  # one transaction: the keyword rows and the completion mark together
            self.keywords.replace(db, self.namespace, source, chunks)
            db.execute(
                text(
                    "UPDATE documents SET fingerprint=:fingerprint, complete=1, pages=:pages, chunks=:chunks, "
                    "updated=:now WHERE namespace=:ns AND source=:source"
                ),
                {
                    "fingerprint": fingerprint,
                    "pages": pages,
                    "chunks": len(chunks),
                    "now": time.time(),
                    "ns": self.namespace,
                    "source": source,
                },
            )

    def remove(self, source: str) -> None:
        from sqlalchemy import text

        with self.engine.begin() as db:
            self.keywords.remove(db, self.namespace, source)
            db.execute(
                text("DELETE FROM documents WHERE namespace=:ns AND source=:source"),
                {"ns": self.namespace, "source": source},
            )

    def keyword_search(self, query: str, k: int) -> list[tuple[Document, float]]:
        """Keyword top-k, higher scores better; any query term may match."""
        with self.engine.connect() as db:
            return self.keywords.search(db, self.namespace, query, k)

    def close(self) -> None:
        self.engine.dispose()
