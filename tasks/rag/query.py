"""Answer questions from the indexed PDFs: retrieve (hybrid BM25 + vectors, fused), prompt, cite.

`retrieve(question, config, k)` returns the top-k chunks as plain dicts
`{"source", "page", "chunk_id", "score", "text"}`; `answer_question(question, config, k)` adds the
chat model's answer, which cites pages as `[paper.pdf p.3]`. Both read the index that the
`pdf-index` flow wrote (same `store` and `embeddings` options).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from langchain_core.documents import Document

from tasks.chat import ChatModelOptions, make_chat_model
from tasks.core.config import option, require
from tasks.rag.indexing import Catalog, EmbeddingOptions, citation, make_embeddings
from tasks.rag.vectorstores import StoreOptions, index_location, make_vector_store, records_path, similarity_search

NOT_IN_CONTEXT = "The documents do not say."


class RagError(RuntimeError):
    """Retrieval cannot run (no index yet, store unreachable); the message says what to do."""


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

    def __post_init__(self) -> None:
        require(self.k >= 1, "retrieval.k", f"must be at least 1, got {self.k}")
        require(self.fetch_k >= self.k, "retrieval.fetch_k", f"must be >= retrieval.k={self.k}, got {self.fetch_k}")
        require(self.rrf_k >= 0, "retrieval.rrf_k", f"must be >= 0, got {self.rrf_k}")
        require(self.keyword_weight >= 0, "retrieval.keyword_weight", f"must be >= 0, got {self.keyword_weight}")


@dataclass
class RagConfig:
    store: StoreOptions = field(default_factory=StoreOptions)
    embeddings: EmbeddingOptions = field(default_factory=EmbeddingOptions)
    retrieval: RetrievalOptions = field(default_factory=RetrievalOptions)
    llm: ChatModelOptions = field(default_factory=ChatModelOptions)


# --- the index, opened once per process ------------------------------------------------------


def _key(*options: Any) -> str:
    return json.dumps([asdict(o) for o in options], sort_keys=True)


_OPEN: dict[str, tuple[Any, Catalog, StoreOptions]] = {}
_OPENING = threading.Lock()


def open_index(config: RagConfig):
    """(vector store, catalog), opened once per process; RagError when nothing was indexed there yet."""
    key = _key(config.store, config.embeddings)
    with _OPENING:
        if key in _OPEN:
            return _OPEN[key][:2]
        catalog = Catalog(records_path(config.store), config.store.collection)
        if not catalog.sources():
            # Checked before the store is opened: a store opened before its collection exists stays empty.
            raise RagError(
                f"the index {index_location(config.store)} (collection {config.store.collection}) holds "
                "no documents yet: run python -m flows.pdf_index --source <pdf, folder or URL> first"
            )
        _OPEN[key] = (make_vector_store(config.store, make_embeddings(config.embeddings)), catalog, config.store)
        return _OPEN[key][:2]


def close_index() -> None:
    """Release every index this process opened: a Milvus Lite file serves one process at a time, so a
    long-running app closes it to let pdf-index update it."""
    from tasks.rag.vectorstores import close

    with _OPENING:
        for vector_store, catalog, store in _OPEN.values():
            close(vector_store, store)
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
    vector_store, catalog = open_index(config)
    if options.mode == "keyword":
        ranked = catalog.keyword_search(question, k)
    elif options.mode == "vector":
        ranked = similarity_search(vector_store, question, k, options.search, options.fetch_k)
    else:
        fetch_k = max(options.fetch_k, k)
        by_vector = [doc for doc, _ in similarity_search(vector_store, question, fetch_k, options.search, fetch_k * 2)]
        by_keyword = [doc for doc, _ in catalog.keyword_search(question, fetch_k)]
        ranked = reciprocal_rank_fusion([(by_vector, 1.0), (by_keyword, options.keyword_weight)], options.rrf_k)
    return [as_source(doc, score) for doc, score in ranked[:k]]


# --- the answer -------------------------------------------------------------------------------

SYSTEM_PROMPT = (
    "You answer questions using only the context below, which consists of numbered excerpts from "
    "documents, each headed by its citation like [paper.pdf p.3]. Answer briefly, and after each "
    "statement cite the excerpt it comes from, copying its citation exactly. If the context does not "
    f"contain the answer, reply exactly: {NOT_IN_CONTEXT}"
)


def make_prompt():
    from langchain_core.prompts import ChatPromptTemplate

    return ChatPromptTemplate.from_messages(
        [
            ("system", SYSTEM_PROMPT + "\n\nContext:\n{context}"),
            ("human", "{question}"),
        ]
    )


def format_context(sources: list[dict[str, Any]]) -> str:
    return "\n\n".join(f"({i}) {citation(s['source'], s['page'])}\n{s['text']}" for i, s in enumerate(sources, 1))


CITATION_PATTERN = re.compile(r"\[[^\[\]\n]+? p\.\s?\d+\]")


def with_citations(answer: str, sources: list[dict[str, Any]]) -> str:
    """The model's answer; when it cited nothing (small models often don't), the pages it was given."""
    answer = answer.strip()
    if not sources or CITATION_PATTERN.search(answer) or answer.startswith(NOT_IN_CONTEXT):
        return answer
    cited = list(dict.fromkeys(citation(s["source"], s["page"]) for s in sources))
    return f"{answer}\n\nSources: {' '.join(cited)}"


def generate_answer(question: str, sources: list[dict[str, Any]], config: RagConfig) -> str:
    """The chat model's answer from the retrieved chunks only, with [file p.N] citations."""
    if not sources:
        return NOT_IN_CONTEXT
    chain = make_prompt() | make_chat_model(config.llm)
    reply = chain.invoke({"context": format_context(sources), "question": question.strip()})
    return with_citations(reply.text, sources)


def answer_question(question: str, config: RagConfig, k: int | None = None) -> dict[str, Any]:
    """{"answer": text with [file p.N] citations, "sources": the retrieved chunks}."""
    sources = retrieve(question, config, k)
    return {"answer": generate_answer(question, sources, config), "sources": sources}


# --- retrieval quality (rag-eval) -------------------------------------------------------------


@dataclass
class Question:
    id: str
    question: str
    answers: list[str]
    page: int | None = None


def load_questions(path: str) -> tuple[list[Question], list[str]]:
    """Questions from a JSONL file `{"id", "question", "answers": [...], "page"}`, and one error per bad line."""
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"question file not found: {path}")
    questions, errors = [], []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            errors.append(f"{where}: not valid JSON ({error.msg})")
            continue
        if not isinstance(row, dict):
            errors.append(f"{where}: expected a JSON object")
            continue
        question, answers = row.get("question"), row.get("answers")
        if not isinstance(question, str) or not question.strip():
            errors.append(f"{where}: 'question' must be a non-empty string")
            continue
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            errors.append(f"{where}: 'answers' must be a non-empty list of non-empty strings")
            continue
        page = row.get("page")
        if page is not None and (not isinstance(page, int) or isinstance(page, bool) or page < 1):
            errors.append(f"{where}: 'page' must be a positive integer")
            continue
        questions.append(Question(str(row.get("id", f"line-{number}")), question.strip(), answers, page))
    return questions, errors


def normalize(text: str) -> str:
    """Matching ignores case, line breaks and Unicode presentation forms (ligatures)."""
    import unicodedata

    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def first_hit(sources: list[dict[str, Any]], answers: list[str]) -> int | None:
    """1-based rank of the first retrieved chunk that contains one of the answers."""
    wanted = [normalize(a) for a in answers]
    for rank, source in enumerate(sources, start=1):
        text = normalize(source["text"])
        if any(answer in text for answer in wanted):
            return rank
    return None


def evaluate_retrieval(questions: list[Question], config: RagConfig, k: int | None = None) -> dict[str, Any]:
    """hit@k, MRR@k and the mean length of the retrieved chunks, plus one row per question."""
    import time

    k = k or config.retrieval.k
    rows, chunk_chars, latencies = [], [], []
    for question in questions:
        started = time.perf_counter()
        sources = retrieve(question.question, config, k)
        latencies.append(time.perf_counter() - started)
        rank = first_hit(sources, question.answers)
        chunk_chars += [len(s["text"]) for s in sources]
        rows.append(
            {
                "id": question.id,
                "question": question.question,
                "rank": rank,
                "page": question.page,
                "retrieved_pages": [s["page"] for s in sources],
            }
        )
    with_page = [r for r in rows if r["page"] is not None]
    n = len(questions) or 1
    return {
        "k": k,
        "questions": len(questions),
        "hit_at_k": sum(r["rank"] is not None for r in rows) / n,
        "mrr": sum(1.0 / r["rank"] for r in rows if r["rank"]) / n,
        # Stricter: the expected page itself is among the top-k (answers may recur on other pages).
        "page_hit_at_k": (
            sum(r["page"] in r["retrieved_pages"] for r in with_page) / len(with_page) if with_page else None
        ),
        "mean_chunk_chars": sum(chunk_chars) / len(chunk_chars) if chunk_chars else 0.0,
        "mean_latency_s": sum(latencies) / len(latencies) if latencies else 0.0,
        "per_question": rows,
    }
