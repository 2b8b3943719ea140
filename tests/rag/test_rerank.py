"""Re-rankers over the fused candidates: best sentence (the index's embedding model) and a
cross-encoder (a tiny one built here: no package ships one), which falls back, saying why, when
its model cannot be loaded."""

from __future__ import annotations

import logging

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from tasks.rag import rerank
from tasks.rag.config import RetrievalOptions
from tasks.rag.retrieval import reranked

QUESTION = "Which city governs Finland?"
# The answer sits in one sentence among unrelated ones; the other chunk is vaguely related throughout.
CHUNKS = {
    "mixed": "Lorem ipsum dolor sit amet. Helsinki is where Finland is governed from. Nulla facilisi mauris.",
    "vague": "Northern Europe has many countries and cities, with governments of many kinds.",
}
VECTORS = {
    QUESTION: [1.0, 0.0, 0.0],
    "Lorem ipsum dolor sit amet.": [0.0, 0.0, 1.0],
    "Helsinki is where Finland is governed from.": [0.98, 0.2, 0.0],
    "Nulla facilisi mauris.": [0.0, 0.1, 0.99],
    CHUNKS["vague"]: [0.7, 0.71, 0.0],
}


class TableEmbeddings(Embeddings):
    def embed_documents(self, texts):
        return [VECTORS[t] for t in texts]

    def embed_query(self, text):
        return VECTORS[text]


def docs(*ids: str) -> list[Document]:
    return [Document(CHUNKS[i], metadata={"chunk_id": i}) for i in ids]


def test_sentences_splits_at_sentence_ends_and_lines_and_drops_fragments():
    assert rerank.sentences("First one here. Second one here!\nA heading line\n3\n") == [
        "First one here.",
        "Second one here!",
        "A heading line",
    ]


def test_best_sentence_lifts_the_chunk_that_answers_in_one_sentence():
    order = rerank.by_best_sentence(QUESTION, docs("vague", "mixed"), RetrievalOptions(), TableEmbeddings())
    assert [d.metadata["chunk_id"] for d in order] == ["mixed", "vague"]


def tiny_cross_encoder(folder):
    """A 2-layer BERT with one output (a cross-encoder's shape) and a word-level vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir()
    words = sorted({w.strip(".,?!").lower() for text in [QUESTION, *CHUNKS.values()] for w in text.split()})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(words) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=1,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_cross_encoder_orders_by_its_scores(tmp_path):
    from sentence_transformers import CrossEncoder

    model = str(tiny_cross_encoder(tmp_path / "ce"))
    options = RetrievalOptions(rerank="cross-encoder", rerank_model=model)
    candidates = docs("vague", "mixed")
    order = rerank.by_cross_encoder(QUESTION, candidates, options, TableEmbeddings())
    scores = CrossEncoder(model).predict([(QUESTION, d.page_content) for d in candidates])
    expected = [d for _, d in sorted(zip(scores, candidates, strict=True), key=lambda p: -p[0])]
    assert [d.metadata["chunk_id"] for d in order] == [d.metadata["chunk_id"] for d in expected]


def test_a_cross_encoder_that_cannot_load_says_why_and_keeps_the_fused_order(tmp_path, caplog):
    from tasks.rag.config import RagConfig

    missing = str(tmp_path / "no-such-model")
    config = RagConfig(retrieval=RetrievalOptions(rerank="cross-encoder", rerank_model=missing))
    fused = [(d, 1.0 / rank) for rank, d in enumerate(docs("vague", "mixed"), start=1)]
    with caplog.at_level(logging.WARNING, logger="tasks.rag.rerank"):
        assert reranked(QUESTION, fused, config) == fused
    assert f"retrieval.rerank=cross-encoder: cannot load the model {missing!r}" in caplog.text
    assert "keeping the fused ranking" in caplog.text


def test_rerank_options_are_checked_at_load():
    from tasks.core.config import ConfigError

    with pytest.raises(ConfigError, match="retrieval.rerank"):
        RetrievalOptions(rerank="colbert")
    with pytest.raises(ConfigError, match="retrieval.rerank_model"):
        RetrievalOptions(rerank="cross-encoder")


def test_coverage_prefers_the_passage_that_names_every_term_in_one_sentence():
    question = "How does the parser report a missing closing bracket?"
    candidates = [
        Document("The parser reads the file. The parser is fast. The parser is small.", metadata={"chunk_id": "one"}),
        Document("A missing closing bracket makes the parser report an error.", metadata={"chunk_id": "all"}),
        Document("Brackets: a closing one may be missing. Reports are written later.", metadata={"chunk_id": "apart"}),
    ]
    order = rerank.by_coverage(question, candidates, RetrievalOptions(), TableEmbeddings())
    assert [d.metadata["chunk_id"] for d in order] == ["all", "apart", "one"]


def test_coverage_weighs_rare_terms_above_terms_every_candidate_has():
    question = "Which option sets the timeout of the resolver?"
    candidates = [
        Document(
            "Each option of the resolver is listed here; option names are case-sensitive.",
            metadata={"chunk_id": "common"},
        ),
        Document("The timeout is the seconds before the resolver gives up.", metadata={"chunk_id": "rare"}),
        Document("The resolver caches answers; every option has a default.", metadata={"chunk_id": "other"}),
    ]
    order = rerank.by_coverage(question, candidates, RetrievalOptions(), TableEmbeddings())
    assert order[0].metadata["chunk_id"] == "rare"


def test_coverage_keeps_the_fused_order_for_a_question_of_stopwords_only():
    assert rerank.by_coverage("What is it?", docs("vague", "mixed"), RetrievalOptions(), TableEmbeddings()) is None
