"""How the RAG flows' results read: the Prefect summary (markdown) and the terminal lines of
pdf-index, rag-query and rag-eval. (`--json` prints each result's `as_dict()` form instead.)"""

from __future__ import annotations

from tasks.core.reporting import table
from tasks.rag.answer import RagAnswer, citation
from tasks.rag.evaluation import RagEvalResult
from tasks.rag.indexing import STATUSES, DocumentReport
from tasks.rag.pdfs import display_name
from tasks.rag.pipeline import IndexRun

# --- pdf-index --------------------------------------------------------------------------------


def index_markdown(run: IndexRun) -> str:
    rows = [[r.source, r.status, r.reason, r.pages, r.chunks, f"{r.seconds:.2f}"] for r in run.reports]
    counts = ", ".join(f"{run.count(status)} {status}" for status in STATUSES if run.count(status))
    return "\n\n".join(
        [
            f"# pdf-index: {len(run.reports)} documents in {run.seconds:.1f} s",
            counts or "nothing to do",
            f"Index: `{run.location}` (collection `{run.collection}`), record store `{run.records}`",
            table(["source", "status", "reason", "pages", "chunks", "seconds"], rows),
        ]
    )


def print_index(reports: list[DocumentReport]) -> None:
    width = max([len(display_name(r.source)) for r in reports] + [8])
    for r in reports:
        reason = f"  ({r.reason})" if r.reason else ""
        print(
            f"{display_name(r.source):{width}}  {r.status:9}  {r.pages:4} pages  "
            f"{r.chunks:5} chunks  {r.seconds:7.2f} s{reason}"
        )


# --- rag-query --------------------------------------------------------------------------------


def answer_markdown(question: str, result: RagAnswer) -> str:
    rows = [
        [i, citation(s["source"], s["page"]), s["chunk_id"], s["score"], s["text"][:160]]
        for i, s in enumerate(result.sources, 1)
    ]
    return "\n\n".join(
        [
            f"# rag-query\n\n**Question:** {question}",
            f"**Answer:** {result.answer}",
            table(["#", "citation", "chunk", "score", "text"], rows),
        ]
    )


def print_answer(result: RagAnswer) -> None:
    print(result.answer)
    print()
    for i, s in enumerate(result.sources, 1):
        print(f"{i}. {citation(s['source'], s['page'])}  score {s['score']}  {s['chunk_id']}")


# --- rag-eval ---------------------------------------------------------------------------------


def eval_markdown(qa: str, result: RagEvalResult) -> str:
    rows = [
        [r["id"], r["question"], r["rank"] or "miss", r["page"], r["page_rank"] or "miss", r["retrieved_pages"]]
        for r in result.per_question
    ]
    page_hit = "" if result.page_hit_at_k is None else f", page hit@{result.k} {result.page_hit_at_k:.3f}"
    head = (
        f"# rag-eval: hit@{result.k} {result.hit_at_k:.3f}, MRR {result.mrr:.3f}{page_hit}\n\n"
        f"{result.questions} questions from `{qa}`; mean retrieved chunk {result.mean_chunk_chars:.0f} characters"
    )
    errors = "\n".join(f"- {e}" for e in result.skipped)
    copied = "\n".join(f"- {v}" for v in result.paraphrase_violations)
    return "\n\n".join(
        [head]
        + ([f"## Skipped lines\n{errors}"] if errors else [])
        + ([f"## Paraphrase rule broken (4+ words copied from the passage)\n{copied}"] if copied else [])
        + [table(["id", "question", "first hit", "page", "first chunk on the page", "retrieved pages"], rows)]
        + (answers_markdown(result.answer_mode) if result.answer_mode else [])
    )


def answers_markdown(mode: dict) -> list[str]:
    rows = [[r["id"], r["answer"], r["correct"], r["cited"], r["citations_supported"]] for r in mode["answers"]]
    head = (
        f"## Answers: accuracy {mode['answer_accuracy']:.3f}, citations supported {mode['citations_supported']:.3f}, "
        f"{mode['seconds_per_answer']:.1f} s per answer"
    )
    return [head, table(["id", "answer", "states the answer", "cited pages", "cited pages hold it"], rows)]


def print_eval(result: RagEvalResult) -> None:
    for error in result.skipped:
        print(f"skipped {error}")
    for violation in result.paraphrase_violations:
        print(f"paraphrase rule: {violation}")
    page_hit = "" if result.page_hit_at_k is None else f"  page hit@{result.k} {result.page_hit_at_k:.3f}"
    print(
        f"hit@{result.k} {result.hit_at_k:.3f}  MRR {result.mrr:.3f}{page_hit}  "
        f"mean chunk {result.mean_chunk_chars:.0f} chars  ({result.questions} questions)"
    )
    if result.answer_mode:
        mode = result.answer_mode
        print(
            f"answers: accuracy {mode['answer_accuracy']:.3f}  citations supported {mode['citations_supported']:.3f}  "
            f"{mode['seconds_per_answer']:.1f} s per answer"
        )
