"""`rag-query`: answer a question from the indexed PDFs, citing the pages the answer came from.

retrieve (hybrid BM25 + vectors) → generate_answer (local model or Ollama) → summary

python -m flows.rag_query "What does the paper say about X?" [--k 5] [--json] [--set llm.provider=ollama]
"""

from __future__ import annotations

import sys

from prefect import flow

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from tasks.core.config import load_config
from tasks.core.reporting import publish_summary
from tasks.core.steps import step
from tasks.rag import answer, report, retrieval
from tasks.rag.answer import RagAnswer
from tasks.rag.cli import DEFAULT_CONFIG, add_k_and_json, checked_k, run_rag_cli
from tasks.rag.config import RagConfig

FLOW = "rag-query"

retrieve = step(retrieval.retrieve)
generate_answer = step(answer.generate_answer, io_retries=1, retry_delay_seconds=2)


@flow(name=FLOW, log_prints=False)
def rag_query(
    question: str, config: str = DEFAULT_CONFIG, overrides: list[str] | None = None, k: int | None = None
) -> dict:
    """{"answer", "sources": [{"source", "page", "chunk_id", "score", "text"}]}."""
    cfg = load_config(RagConfig, config, overrides)
    sources = retrieve(question, cfg, k)
    result = RagAnswer(generate_answer(question, sources, cfg), sources)
    publish_summary(FLOW, report.answer_markdown(question, result))
    return result.as_dict()


def add_arguments(parser) -> None:
    parser.add_argument("question", nargs="?", help="the question to answer")
    add_k_and_json(parser, "chunks to retrieve (default: retrieval.k)", 'print {"answer", "sources"} as JSON')


def flow_kwargs(args, parser) -> dict:
    if not args.question or not args.question.strip():
        parser.error('a question is needed: python -m flows.rag_query "your question"')
    return {"question": args.question, "k": checked_k(args, parser)}


def print_text(result: dict) -> None:
    report.print_answer(RagAnswer(**result))


def main(argv: list[str] | None = None) -> int:
    return run_rag_cli(rag_query, argv, add_arguments, flow_kwargs, print_text)


if __name__ == "__main__":
    sys.exit(main())
