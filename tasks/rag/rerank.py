"""Re-rank the fused candidates by `retrieval.rerank`: one function per kind, one line per kind in `RERANKERS`.

A re-ranker gets the question and the candidates (best first, as fused from BM25 and vectors) and
returns a ranking of its own, which is fused with the candidates' order by reciprocal rank
(`retrieval.rerank_weight`), so what BM25 found (exact terms, symbols, non-English words) still
counts. Kinds:

- `none`: the fused order as it is.
- `sentences`: each candidate scored by its best-matching sentence (cosine with the embedding
  model that built the index): a chunk that answers in one sentence among unrelated ones is not
  diluted by them.
- `coverage`: no model at all: each candidate scored by how much of the question's topic words
  (weighted by their rarity among the candidates) one sentence, and the whole passage, contain:
  a passage that names every term of the question in one place beats one that repeats a single term.
- `cross-encoder`: a sentence-transformers `CrossEncoder` (`retrieval.rerank_model`: a folder or
  a Hub id) reads question and passage together. No package ships one; when it cannot be loaded
  the message says why once, and the fused order is kept.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings

    from tasks.rag.config import RetrievalOptions

log = logging.getLogger(__name__)

# Sentence ends, and line breaks that pypdf leaves between items, headings and table rows.
SENTENCE_BREAK = re.compile(r"(?<=[.!?;:])\s+|\n+")
MIN_SENTENCE_CHARS = 12  # shorter pieces (page numbers, lone symbols) say nothing on their own

RerankFn = Callable[[str, list["Document"], "RetrievalOptions", "Embeddings"], list["Document"] | None]


@dataclass(frozen=True)
class Reranker:
    order: RerankFn | None  # the candidates re-ordered; None: keep the fused order
    help: str  # what `retrieval.rerank=<name>` does, for --help-config
    needs_model: bool = False  # reads `retrieval.rerank_model`


def sentences(text: str) -> list[str]:
    pieces = [p.strip() for p in SENTENCE_BREAK.split(text)]
    return [p for p in pieces if len(p) >= MIN_SENTENCE_CHARS] or [text]


def by_best_sentence(question: str, candidates: list[Document], options: RetrievalOptions, embeddings: Embeddings):
    """Candidates ordered by the cosine of their best sentence with the question (vectors are normalized)."""
    split = [sentences(doc.page_content) for doc in candidates]
    vectors = embeddings.embed_documents([s for pieces in split for s in pieces])
    query = embeddings.embed_query(question)
    scores, start = [], 0
    for pieces in split:
        scores.append(max(sum(q * v for q, v in zip(query, vector)) for vector in vectors[start : start + len(pieces)]))
        start += len(pieces)
    order = sorted(range(len(candidates)), key=lambda i: scores[i], reverse=True)
    return [candidates[i] for i in order]


def _matches(words: list[tuple[str, bool]], text: str) -> set[int]:
    """Indexes of the topic words (keywords.topic_words: stem, is_prefix) that occur in `text`."""
    tokens = set(re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold()))
    found = set()
    for i, (stem, prefix) in enumerate(words):
        if stem in tokens or (prefix and any(t.startswith(stem) for t in tokens)):
            found.add(i)
    return found


def by_coverage(question: str, candidates: list[Document], options: RetrievalOptions, embeddings: Embeddings):
    """Candidates ordered by the share of the question's topic words (rarer ones weigh more) found in
    their best sentence plus the share found in the whole passage."""
    from tasks.rag.keywords import topic_words

    words = topic_words(question)
    if not words:
        return None
    in_passage = [_matches(words, doc.page_content) for doc in candidates]
    # Rarity among the candidates: a word every candidate has cannot tell them apart.
    weight = [math.log(1 + len(candidates) / (1 + sum(i in m for m in in_passage))) for i in range(len(words))]
    total = sum(weight) or 1.0

    def share(found: set[int]) -> float:
        return sum(weight[i] for i in found) / total

    scores = [
        share(found) + max(share(_matches(words, s)) for s in sentences(doc.page_content))
        for doc, found in zip(candidates, in_passage)
    ]
    order = sorted(range(len(candidates)), key=lambda i: scores[i], reverse=True)
    return [candidates[i] for i in order]


@functools.lru_cache(maxsize=2)
def load_cross_encoder(model: str):
    """The CrossEncoder, or None (and one warning naming the model and why) when it cannot be loaded."""
    try:
        from sentence_transformers import CrossEncoder

        return CrossEncoder(model, device="cpu")
    except Exception as error:  # any load failure: a missing folder, no network, unreadable files
        log.warning(
            "retrieval.rerank=cross-encoder: cannot load the model %r (%s: %s); keeping the fused ranking",
            model,
            type(error).__name__,
            str(error).splitlines()[0] if str(error) else "",
        )
        return None


def by_cross_encoder(question: str, candidates: list[Document], options: RetrievalOptions, embeddings: Embeddings):
    model = load_cross_encoder(options.rerank_model or "")
    if model is None:
        return None
    scores = model.predict([(question, doc.page_content) for doc in candidates], show_progress_bar=False)
    order = sorted(range(len(candidates)), key=lambda i: float(scores[i]), reverse=True)
    return [candidates[i] for i in order]


RERANKERS: dict[str, Reranker] = {
    "none": Reranker(None, "the fused order as it is"),
    "sentences": Reranker(by_best_sentence, "each candidate by its best sentence (the index's embedding model)"),
    "coverage": Reranker(
        by_coverage,
        "each candidate by how many of the question's rarer terms one sentence and the passage hold (no model)",
    ),
    "cross-encoder": Reranker(
        by_cross_encoder,
        "a sentence-transformers CrossEncoder at retrieval.rerank_model (the fused order, with a warning, "
        "when it cannot be loaded)",
        needs_model=True,
    ),
}
