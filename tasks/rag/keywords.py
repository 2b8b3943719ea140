"""The keyword index of the chunks, in the record store's database: SQLite FTS5 (BM25) in a file, or
PostgreSQL full-text search on a shared server. One class per database, one line per class in
`KEYWORD_INDEXES`, chosen by the record store URL's dialect.

Both read a question the same way (`topic_words`): its topic words, the longer ones cut to a
prefix so inflections match; both stem English on both sides and ignore diacritics.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from langchain_core.documents import Document
    from sqlalchemy.engine import Connection

# Words that say nothing about a question's topic (English and German, the languages of our test
# documents). In an OR query they would let chunks that are merely long outrank the right one.
ENGLISH_STOPWORDS = """
    a about above after again all also am an and any are as at be because been before being below between both
    but by can could did do does doing down during each few for from further had has have having he her here
    hers him his how i if in into is it its itself just me more most my no nor not of off on once only or other
    our out over own same she should so some such than that the their them then there these they this those
    through to too under until up very was we were what when where which while who whom why will with would you
    your yours
"""
GERMAN_STOPWORDS = """
    aber alle allem allen aller alles als also am an ans auch auf aus bei beim bin bis bist da damit dann das
    dass dem den denn der des die dies diese diesem diesen dieser dieses doch dort du durch ein eine einem einen
    einer eines er es etwa für gibt hat hatte ich ihr im in ins ist ja jede jedem jeden jeder jedes kann kein
    keine können man mit muss nach nicht noch nur ob oder ohne sein seine sich sie sind so soll über um und uns
    unter vom von vor war warum was wann welche welchem welchen welcher welches wenn werden wer wie wieso wird
    wo wofür womit zu zum zur zwischen
"""
STOPWORDS = frozenset(ENGLISH_STOPWORDS.split() + GERMAN_STOPWORDS.split())


def topic_words(query: str) -> list[tuple[str, bool]]:
    """(stem, is_prefix) for each topic word of a question, stopwords left out.

    Cutting two letters off longer words before matching them as a prefix lets "topologischen"
    find "topologischer" and "Räumen" find "Räume"; the English stemmer does the same for English
    on both sides.
    """
    words = []
    for word in dict.fromkeys(w.lower() for w in re.findall(r"\w+", query)):
        if word in STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        long = len(word) >= 6
        words.append((word[: max(4, len(word) - 2)] if long else word, long))
    return words


def keyword_terms(query: str) -> list[str]:
    """FTS5 terms for a question: topic words only, the longer ones as prefixes."""
    return ['"' + stem.replace('"', '""') + '"' + ("*" if prefix else "") for stem, prefix in topic_words(query)]


def _document(text: str, source: str, page, title: str, chunk_id: str) -> Document:
    from langchain_core.documents import Document

    return Document(
        page_content=text, metadata={"source": source, "page": int(page), "title": title, "chunk_id": chunk_id}
    )


def _rows(namespace: str, source: str, chunks: list[Document]) -> list[dict]:
    return [
        {
            "text": c.page_content,
            "namespace": namespace,
            "source": source,
            "page": c.metadata["page"],
            "title": c.metadata["title"],
            "chunk_id": c.metadata["chunk_id"],
        }
        for c in chunks
    ]


# What `store.collection` (a catalog's namespace) may be: letters, digits and underscores after a letter.
COLLECTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,200}")


class Fts5Keywords:
    """SQLite FTS5 with BM25 ranking: porter stemming over unicode61 without diacritics.

    One FTS5 table per namespace (collection): FTS5 computes BM25's statistics (how rare a term is,
    the mean chunk length) over its whole table, so collections sharing a table would change each
    other's rankings."""

    LEGACY_TABLE = "chunks_fts"  # every namespace in one table, as record stores written before hold it

    @staticmethod
    def table(namespace: str) -> str:
        if not COLLECTION_NAME.fullmatch(namespace):  # it becomes part of an SQL table name
            raise ValueError(f"not a collection name: {namespace!r}")
        return f"chunks_fts_{namespace}"

    def create(self, db: Connection, namespace: str) -> None:
        from sqlalchemy import text

        table = self.table(namespace)
        db.execute(
            text(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING fts5("
                "text, source UNINDEXED, page UNINDEXED, title UNINDEXED, chunk_id UNINDEXED, "
                "tokenize = 'porter unicode61 remove_diacritics 2')"
            )
        )
        legacy = db.execute(
            text("SELECT 1 FROM sqlite_master WHERE type='table' AND name=:name"), {"name": self.LEGACY_TABLE}
        ).first()
        if legacy:  # this namespace's rows move to its own table, once
            db.execute(
                text(
                    f"INSERT INTO {table}(text, source, page, title, chunk_id) "
                    f"SELECT text, source, page, title, chunk_id FROM {self.LEGACY_TABLE} WHERE namespace=:ns"
                ),
                {"ns": namespace},
            )
            db.execute(text(f"DELETE FROM {self.LEGACY_TABLE} WHERE namespace=:ns"), {"ns": namespace})

    def replace(self, db: Connection, namespace: str, source: str, chunks: list[Document]) -> None:
        from sqlalchemy import text

        self.remove(db, namespace, source)
        if chunks:
            db.execute(
                text(
                    f"INSERT INTO {self.table(namespace)}(text, source, page, title, chunk_id) "
                    "VALUES (:text, :source, :page, :title, :chunk_id)"
                ),
                _rows(namespace, source, chunks),
            )

    def remove(self, db: Connection, namespace: str, source: str) -> None:
        from sqlalchemy import text

        db.execute(text(f"DELETE FROM {self.table(namespace)} WHERE source=:source"), {"source": source})

    def search(self, db: Connection, namespace: str, query: str, k: int) -> list[tuple[Document, float]]:
        """BM25 top-k (FTS5's bm25(), negated so that higher is better); any query term may match."""
        from sqlalchemy import text

        terms = keyword_terms(query)
        if not terms:
            return []
        table = self.table(namespace)
        rows = db.execute(
            text(
                f"SELECT text, source, page, title, chunk_id, bm25({table}) FROM {table} "
                f"WHERE {table} MATCH :match ORDER BY bm25({table}) LIMIT :k"
            ),
            {"match": " OR ".join(terms), "k": k},
        )
        return [(_document(*row[:5]), -float(row[5])) for row in rows]


class PostgresKeywords:
    """PostgreSQL full-text search: a GIN-indexed tsvector per chunk, English stemming over
    unaccented text, ranked by cover density (`ts_rank_cd`: PostgreSQL has no built-in BM25)."""

    VECTOR = "to_tsvector('english', unaccent(:text))"

    def create(self, db: Connection, namespace: str) -> None:
        """One table for every namespace: ts_rank_cd scores a chunk alone, with no statistics over the table."""
        from sqlalchemy import text

        # Indexers starting together would race on CREATE ... IF NOT EXISTS: one at a time.
        db.execute(text("SELECT pg_advisory_xact_lock(hashtext('ftllm-rag-keywords'))"))
        db.execute(text("CREATE EXTENSION IF NOT EXISTS unaccent"))  # a trusted extension: the owner may create it
        db.execute(
            text(
                "CREATE TABLE IF NOT EXISTS chunks_keywords (namespace TEXT NOT NULL, source TEXT NOT NULL, "
                "page INTEGER NOT NULL, title TEXT NOT NULL, chunk_id TEXT NOT NULL, text TEXT NOT NULL, "
                "terms TSVECTOR NOT NULL)"
            )
        )
        db.execute(text("CREATE INDEX IF NOT EXISTS chunks_keywords_terms ON chunks_keywords USING GIN (terms)"))
        db.execute(text("CREATE INDEX IF NOT EXISTS chunks_keywords_source ON chunks_keywords (namespace, source)"))

    def replace(self, db: Connection, namespace: str, source: str, chunks: list[Document]) -> None:
        from sqlalchemy import text

        self.remove(db, namespace, source)
        if chunks:
            db.execute(
                text(
                    "INSERT INTO chunks_keywords(namespace, source, page, title, chunk_id, text, terms) "
                    f"VALUES (:namespace, :source, :page, :title, :chunk_id, :text, {self.VECTOR})"
                ),
                _rows(namespace, source, chunks),
            )

    def remove(self, db: Connection, namespace: str, source: str) -> None:
        from sqlalchemy import text

        db.execute(
            text("DELETE FROM chunks_keywords WHERE namespace=:ns AND source=:source"),
            {"ns": namespace, "source": source},
        )

    def search(self, db: Connection, namespace: str, query: str, k: int) -> list[tuple[Document, float]]:
        from sqlalchemy import text

        words = topic_words(query)
        if not words:
            return []
        # \w+ words only, so quoting them is enough; :* matches a prefix.
        match = " | ".join(f"'{stem}'" + (":*" if prefix else "") for stem, prefix in words)
        rows = db.execute(
            text(
                "SELECT text, source, page, title, chunk_id, ts_rank_cd(terms, q) AS score "
                "FROM chunks_keywords, to_tsquery('english', unaccent(:match)) AS q "
                "WHERE namespace=:ns AND terms @@ q ORDER BY score DESC LIMIT :k"
            ),
            {"match": match, "ns": namespace, "k": k},
        )
        return [(_document(*row[:5]), float(row[5])) for row in rows]


# By the record store URL's SQLAlchemy dialect.
KEYWORD_INDEXES = {"sqlite": Fts5Keywords, "postgresql": PostgresKeywords}
