"""Weaviate's similarity search is a hybrid (BM25 + vectors) query: retrieval's own BM25 fusion must
get a vector-only ranking from it, or keywords count twice. Tested against the real
langchain-weaviate store code over a client double that answers hybrid queries as Weaviate does
(tests/doubles/weaviate_client.py): no Weaviate server can run here."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from tasks.rag.config import StoreOptions
from tasks.rag.retrieval import reciprocal_rank_fusion
from tasks.rag.stores import weaviate
from tests.doubles.weaviate_client import WEAVIATE_DEFAULT_ALPHA, WeaviateClientDouble

QUESTION = "capital of Finland"
# A answers the question in other words; B repeats the question's words but is about something else.
CHUNKS = {
    "a": ("Helsinki, on the Gulf, is where Finland's government sits: its capital.", [0.95, 0.31]),
    "b": ("Capital of Finland? Capital letters in Finland's capital city names, capital of Finland.", [0.85, 0.53]),
    "c": ("Finland has two official languages, Finnish and Swedish.", [0.9, 0.44]),
    "d": ("Population figures of EU countries, in millions.", [0.3, 0.95]),
}
VECTORS = {text: vector for text, vector in CHUNKS.values()} | {QUESTION: [1.0, 0.0]}


class TableEmbeddings(Embeddings):
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [VECTORS[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return VECTORS[text]


@pytest.fixture
def weaviate_store(monkeypatch):
    client = WeaviateClientDouble()
    monkeypatch.setattr(weaviate, "connect", lambda options: client)
    store = weaviate.open_weaviate(StoreOptions(kind="weaviate", uri="http://127.0.0.1:8080"), TableEmbeddings())
    for chunk_id, (text, vector) in CHUNKS.items():
        properties = {"text": text, "source": "eu.pdf", "page": 1, "title": "EU", "chunk_id": chunk_id}
        client.add(weaviate.class_name("pdf_chunks"), properties, vector)
    return store, client


def ids(ranked) -> list[str]:
    return [doc.metadata["chunk_id"] for doc, _ in ranked]


def test_weaviate_similarity_search_is_vector_only(weaviate_store):
    store, client = weaviate_store
    ranked = store.search(QUESTION, k=4)
    assert client.hybrid_calls[-1]["alpha"] == weaviate.VECTOR_ONLY == 1.0
    assert ids(ranked) == ["a", "c", "b", "d"]  # cosine order
    # What langchain-weaviate does unasked: Weaviate's hybrid lifts the chunk that repeats the words.
    hybrid = store.vectors.similarity_search_with_score(QUESTION, k=4)
    assert client.hybrid_calls[-1]["alpha"] == WEAVIATE_DEFAULT_ALPHA
    assert ids(hybrid)[0] == "b"


def test_fused_ranking_counts_keywords_once(weaviate_store):
    store, _ = weaviate_store
    by_keyword = [Document("", metadata={"chunk_id": cid}) for cid in ("b", "a")]  # BM25 from the keyword index
    fused = reciprocal_rank_fusion([([d for d, _ in store.search(QUESTION, k=4)], 1.0), (by_keyword, 1.0)], 10)
    assert ids(fused)[:2] == ["a", "b"]
    counted_twice = [d for d, _ in store.vectors.similarity_search_with_score(QUESTION, k=4)]
    assert ids(reciprocal_rank_fusion([(counted_twice, 1.0), (by_keyword, 1.0)], 10))[0] == "b"
