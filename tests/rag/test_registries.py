"""The registries are the one place a vector store or a text splitter is chosen: a kind registered
there (an in-memory store double, a word splitter) is used by indexing, retrieval and chunking with
no other module changed."""

from __future__ import annotations

import re
from typing import get_args

import pytest

from tasks.core.config import ConfigError
from tasks.rag import chunking, embeddings, indexing, retrieval, splitters, stores
from tasks.rag.catalog import Catalog
from tasks.rag.config import (
    ChunkOptions,
    EmbeddingOptions,
    RagConfig,
    RetrievalOptions,
    SplitterName,
    StoreKindName,
    StoreOptions,
)
from tasks.rag.pdfs import ExtractedPdf, Page
from tests.doubles.memory_store import MemoryStores

PAGES = {
    "/docs/finland.pdf": ["Helsinki is the capital of Finland.", "Finland has many lakes and saunas."],
    "/docs/zen.pdf": ["Errors should never pass silently, unless explicitly silenced."],
}


@pytest.fixture
def memory(monkeypatch, tmp_path):
    memory = MemoryStores(records_folder=tmp_path)
    monkeypatch.setitem(stores.STORES, "memory", memory.kind)
    yield memory
    retrieval.close_index()  # the process-wide cache of open indexes must not outlive the registration


def index_pages(options: StoreOptions) -> None:
    """Index PAGES through the registry, as pdf-index writes a document."""
    store = stores.open_store(options, embeddings.make_embeddings(EmbeddingOptions()))
    records = stores.records_url(options)
    catalog = Catalog(records, options.collection)
    record_manager = indexing.make_record_manager(records, options.collection)
    for source, texts in PAGES.items():
        pages = [Page(number, text) for number, text in enumerate(texts, start=1)]
        doc = ExtractedPdf(source=source, title=source, pages=pages, page_count=len(pages), sha256=source)
        chunks = chunking.chunk_document(doc, ChunkOptions())
        report = indexing.upsert_document(doc, chunks, source, store.vectors, record_manager, catalog)
        assert report.status == "indexed"
    store.flush()
    store.close()
    catalog.close()


@pytest.mark.parametrize("mode", ["vector", "hybrid"])
def test_a_registered_store_is_the_one_retrieval_searches(memory, mode):
    options = StoreOptions(kind="memory", collection="notes")
    index_pages(options)
    assert stores.index_location(options) == "memory://notes"
    assert stores.records_url(options) == f"sqlite:///{memory.records_folder / 'records-notes.db'}"
    assert len(memory.collections["notes"].store) == 3  # one vector per page: the double holds them

    config = RagConfig(store=options, retrieval=RetrievalOptions(mode=mode))
    sources = retrieval.retrieve("What is the capital of Finland?", config, k=2)
    assert sources[0]["source"] == "/docs/finland.pdf" and sources[0]["page"] == 1
    assert "Helsinki" in sources[0]["text"]
    assert memory.opened == ["notes", "notes"]  # once to index, once for retrieval (then cached)
    retrieval.retrieve("Which errors pass silently?", config, k=1)
    assert memory.opened == ["notes", "notes"]
    retrieval.close_index()
    assert memory.closed == ["notes", "notes"]


def test_store_kinds_are_the_registry():
    assert get_args(StoreKindName) == tuple(stores.STORES)
    with pytest.raises(ConfigError, match=re.escape("store.kind: expected one of 'milvus' | 'weaviate', got 'chroma'")):
        StoreOptions(kind="chroma")


def test_a_registered_splitter_is_the_one_chunking_uses(monkeypatch):
    from langchain_text_splitters import CharacterTextSplitter

    def words(options: ChunkOptions):
        return CharacterTextSplitter(separator=" ", chunk_size=options.size, chunk_overlap=options.overlap)

    monkeypatch.setitem(splitters.SPLITTERS, "words", words)
    text = " ".join(f"word{i:03d}" for i in range(100))  # 799 characters, no line breaks
    doc = ExtractedPdf(source="/docs/w.pdf", title="w", pages=[Page(1, text)], page_count=1, sha256="w")
    chunks = chunking.chunk_document(doc, ChunkOptions(splitter="words", size=80, overlap=0))
    assert len(chunks) == 10 and all(c.page_content.startswith("word") for c in chunks)
    assert get_args(SplitterName) == ("recursive", "character")
    with pytest.raises(
        ConfigError, match=re.escape("chunk.splitter: expected one of 'recursive' | 'character' | 'words'")
    ):
        ChunkOptions(splitter="sentences")
