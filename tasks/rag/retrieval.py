"""Retrieve the chunks that answer a question: BM25 keywords and vectors, fused by reciprocal rank.

`retrieve(question, config, k)` returns the top-k chunks as plain dicts
`{"source", "page", "chunk_id", "score", "text"}`, best first; `RagRetriever` is the same as a
LangChain `BaseRetriever`. It reads the index that the
`pdf-index` flow wrote (same `store` and `embeddings` options), opened once per process.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from tasks.rag.catalog import Catalog
from tasks.rag.config import RagConfig
from tasks.rag.embeddings import make_embeddings
from tasks.rag.rerank import RERANKERS
from tasks.rag.stores import OpenStore, index_location, open_store, records_url


class RagError(RuntimeError):
    """Retrieval cannot run (no index yet, store unreachable); the message says what to do."""


# --- the index, opened once per process ------------------------------------------------------

_OPEN: dict[str, tuple[OpenStore, Catalog]] = {}
_OPENING = threading.Lock()


def open_index(config: RagConfig) -> tuple[OpenStore, Catalog]:
    """(vector store, catalog), opened once per process; RagError when nothing was indexed there yet."""
    key = json.dumps([asdict(config.store), asdict(config.embeddings)], sort_keys=True)
    with _OPENING:
        if key in _OPEN:
            return _OPEN[key]
        catalog = Catalog(records_url(config.store), config.store.collection)
        if not catalog.sources():
            # Checked before the store is opened: a store opened before its collection exists stays empty.
            raise RagError(
                f"the index {index_location(config.store)} (collection {config.store.collection}) holds "
                "no documents yet: run python -m flows.pdf_index --source <pdf, folder or URL> first"
            )
        _OPEN[key] = (open_store(config.store, make_embeddings(config.embeddings)), catalog)
        return _OPEN[key]


def close_index() -> None:
    """Release every index this process opened: a Milvus Lite file serves one process at a time, so a
    long-running app closes it to let pdf-index update it."""
    with _OPENING:
        for store, catalog in _OPEN.values():
            store.close()
            catalog.close()
        _OPEN.clear()


# --- retrieval --------------------------------------------------------------------------------


def reciprocal_rank_fusion(rankings: list[tuple[list[Document], float]], rrf_k: int) -> list[tuple[Document, float]]:
    """Fuse ranked lists (each with a weight) by chunk id: score = sum of weight / (rrf_k + rank)."""
    scores: dict[str, float] = {}
    docs: dict[str, Document] = {}
    for ranked, weight in rankings:
        for rank, doc in enumerate(ranked, start=1):
            cid = doc.metadata["chunk_id"]
            scores[cid] = scores.get(cid, 0.0) + weight / (rrf_k + rank)
            docs.setdefault(cid, doc)
    order = sorted(scores, key=lambda cid: scores[cid], reverse=True)
    return [(docs[cid], scores[cid]) for cid in order]


def as_source(doc: Document, score: float | None) -> dict[str, Any]:
    meta = doc.metadata
    return {
        "source": meta["source"],
        "page": int(meta["page"]),
        "chunk_id": meta["chunk_id"],
        "score": None if score is None else round(float(score), 6),
        "text": doc.page_content,
    }


def retrieve(question: str, config: RagConfig, k: int | None = None) -> list[dict[str, Any]]:
    """The top-k chunks for a question, best first, as source dicts."""
    if not question or not question.strip():
        raise ValueError("the question is empty")
    options = config.retrieval
    k = k or options.k
    store, catalog = open_index(config)
    if options.mode == "keyword":
        ranked = catalog.keyword_search(question, k)
    elif options.mode == "vector":
        ranked = store.search(question, k, options.search, options.fetch_k)
    else:
        fetch_k = max(options.fetch_k, k)
        by_vector = [doc for doc, _ in store.search(question, fetch_k, options.search, fetch_k * 2)]
        by_keyword = [doc for doc, _ in catalog.keyword_search(question, fetch_k)]
        ranked = reciprocal_rank_fusion([(by_vector, 1.0), (by_keyword, options.keyword_weight)], options.rrf_k)
    ranked = reranked(question, ranked, config)
    return [as_source(doc, score) for doc, score in ranked[:k]]


def reranked(question: str, ranked: list[tuple[Document, float | None]], config: RagConfig):
    """The first `retrieval.rerank_candidates` re-ordered by the re-ranker's order fused with theirs."""
    options = config.retrieval
    rerank = RERANKERS[options.rerank].order
    head = [doc for doc, _ in ranked[: options.rerank_candidates]]
    order = rerank(question, head, options, make_embeddings(config.embeddings)) if rerank and head else None
    if order is None:  # no re-ranker, or it could not be loaded (it said why)
        return ranked
    fused = reciprocal_rank_fusion([(head, 1.0), (order, options.rerank_weight)], options.rrf_k)
    return fused + ranked[options.rerank_candidates :]


class RagRetriever(BaseRetriever):
    """`retrieve` as a LangChain retriever, to plug into chains: `RagRetriever(config=cfg) | format_docs`.

    Each Document carries the source dict's fields in its metadata (source, page, chunk_id, score).
    The fusion stays `reciprocal_rank_fusion` rather than LangChain's `EnsembleRetriever` (the same
    weighted formula): EnsembleRetriever drops the fused score that rag-query reports per source.
    """

    config: RagConfig
    k: int | None = None  # default: config.retrieval.k

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [
            Document(page_content=s["text"], metadata={key: value for key, value in s.items() if key != "text"})
            for s in retrieve(query, self.config, self.k)
        ]
