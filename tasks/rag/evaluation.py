"""Retrieval quality on a question file (rag-eval): hit@k, MRR@k, page hit@k, the mean length of the chunks.

A question file has one JSON object a line: {"id", "question", "answers": [short strings], "page",
"passage"}; "page" and "passage" (the text that answers the question, copied from the document)
are optional. A hit is a retrieved chunk that contains one of the answers (ignoring case and line
breaks). A question that copies 4 or more consecutive words from its passage breaks the paraphrase
rule (tasks/rag/paraphrase.py): it is still scored, and reported.
"""

from __future__ import annotations

import json
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks.rag import paraphrase
from tasks.rag.config import RagConfig
from tasks.rag.retrieval import retrieve


@dataclass
class Question:
    id: str
    question: str
    answers: list[str]
    page: int | None = None
    passage: str | None = None  # the document's text that answers it: what the paraphrase rule checks


@dataclass
class RagEvalResult:
    """rag-eval's result; `as_dict()` is what `--json` prints, in this order."""

    k: int
    questions: int
    hit_at_k: float
    mrr: float
    page_hit_at_k: float | None  # None when no question names its page
    mean_chunk_chars: float
    mean_latency_s: float
    per_question: list[dict[str, Any]]  # {"id", "question", "rank", "page", "page_rank", "retrieved_pages"}
    skipped: list[str] = field(default_factory=list)  # the question file's bad lines, with why
    paraphrase_violations: list[str] = field(default_factory=list)  # questions copying 4+ words of their passage
    answer_mode: dict[str, Any] | None = None  # --answers: evaluate_answers' result
    mlflow_run_id: str | None = None

    def metrics(self) -> dict[str, float]:
        names = ("hit_at_k", "mrr", "mean_chunk_chars", "questions", "k", "mean_latency_s")
        metrics = {name: getattr(self, name) for name in names}
        if self.page_hit_at_k is not None:
            metrics["page_hit_at_k"] = self.page_hit_at_k
        for name in ("answer_accuracy", "citations_supported", "seconds_per_answer"):
            if self.answer_mode is not None:
                metrics[name] = self.answer_mode[name]
        return metrics

    def as_dict(self) -> dict[str, Any]:
        result = asdict(self)
        for optional in ("answer_mode", "mlflow_run_id"):
            if result[optional] is None:
                del result[optional]
        return result


def load_questions(path: str) -> tuple[list[Question], list[str]]:
    """Questions from a JSONL file `{"id", "question", "answers": [...], "page"}`, and one error per bad line."""
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
        passage = row.get("passage")
        if passage is not None and (not isinstance(passage, str) or not passage.strip()):
            errors.append(f"{where}: 'passage' must be a non-empty string")
            continue
        questions.append(Question(str(row.get("id", f"line-{number}")), question.strip(), answers, page, passage))
    return questions, errors


def normalize(text: str) -> str:
    """Matching ignores case, line breaks and Unicode presentation forms (ligatures)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def paraphrase_violations(questions: list[Question]) -> list[str]:
    """One message per question that copies 4 or more consecutive words from its passage."""
    found = []
    for question in questions:
        if question.passage:
            found += paraphrase.violations(question.id, question.question, question.passage)
    return found


def first_hit(sources: list[dict[str, Any]], answers: list[str]) -> int | None:
    """1-based rank of the first retrieved chunk that contains one of the answers."""
    wanted = [normalize(a) for a in answers]
    for rank, source in enumerate(sources, start=1):
        text = normalize(source["text"])
        if any(answer in text for answer in wanted):
            return rank
    return None


def evaluate_retrieval(questions: list[Question], config: RagConfig, k: int | None = None) -> dict[str, Any]:
    """hit@k, MRR@k and the mean length of the retrieved chunks, plus one row per question
    (the fields of `RagEvalResult`, as the benchmarks read them)."""
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
                "page_rank": next((i for i, s in enumerate(sources, 1) if s["page"] == question.page), None),
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
        "paraphrase_violations": paraphrase_violations(questions),
    }


# --- answer mode: the full rag-query on every question ----------------------------------------


def states_answer(answer: str, answers: list[str]) -> bool:
    """The model's answer contains one of the expected answers (normalized as for retrieval hits)."""
    text = normalize(answer)
    return any(normalize(a) in text for a in answers)


def cited_pages(answer: str) -> list[tuple[str, int]]:
    """(file name, page) of every `[file p.N]` citation in an answer, in order, once each."""
    from tasks.rag.answer import CITATION_PATTERN

    found = [(m.group(1).strip(), int(m.group(2))) for m in CITATION_PATTERN.finditer(answer)]
    return list(dict.fromkeys(found))


def supporting(cited: list[tuple[str, int]], sources: list[dict[str, Any]], answers: list[str]) -> list[bool]:
    """For each cited page: does a chunk the model was given from that page contain an expected answer?"""
    from tasks.rag.pdfs import display_name

    return [
        any(
            display_name(s["source"]) == name and s["page"] == page and states_answer(s["text"], answers)
            for s in sources
        )
        for name, page in cited
    ]


def evaluate_answers(questions: list[Question], config: RagConfig, k: int | None = None) -> dict[str, Any]:
    """Answer accuracy (the answer states an expected answer) and citation support (every cited page
    holds it), per question and overall, plus the seconds per answer."""
    from tasks.rag.answer import SOURCES_APPENDED, answer_question

    rows, seconds = [], []
    for question in questions:
        started = time.perf_counter()
        result = answer_question(question.question, config, k)
        seconds.append(time.perf_counter() - started)
        model_text, appended, pages_given = result["answer"].partition(SOURCES_APPENDED)
        # The model's own citations must all hold the answer; when it cited none, rag-query listed the
        # pages it was given, and one of them holding the answer is enough.
        cited = cited_pages(model_text) or cited_pages(pages_given)
        support = supporting(cited, result["sources"], question.answers)
        model_cited = not appended
        rows.append(
            {
                "id": question.id,
                "question": question.question,
                "answer": result["answer"],
                "correct": states_answer(model_text, question.answers),
                "cited": [f"{name} p.{page}" for name, page in cited],
                "cited_support": support,
                "model_cited": model_cited,
                "citations_supported": bool(support) and (all(support) if model_cited else any(support)),
            }
        )
    n = len(rows) or 1
    return {
        "answer_accuracy": sum(r["correct"] for r in rows) / n,
        "citations_supported": sum(r["citations_supported"] for r in rows) / n,
        "seconds_per_answer": sum(seconds) / len(seconds) if seconds else 0.0,
        "answers": rows,
    }
