"""`rag-query`: answer a question from the indexed PDFs, citing the pages the answer came from.

retrieve (hybrid BM25 + vectors) → generate_answer (local model or Ollama) → summary

python -m flows.rag_query "What does the paper say about X?" [--k 5] [--json] [--set llm.provider=ollama]
"""

from __future__ import annotations

import json
import sys

from prefect import flow

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from tasks.core.cli import run_cli
from tasks.core.config import load_config
from tasks.core.reporting import publish_summary, table
from tasks.core.steps import step
from tasks.rag import query as rag
from tasks.rag.indexing import citation

FLOW = "rag-query"
DEFAULT_CONFIG = "configs/rag.yaml"

retrieve = step(rag.retrieve)
generate_answer = step(rag.generate_answer, io_retries=1, retry_delay_seconds=2)


def summary_markdown(question: str, result: dict) -> str:
    rows = [
        [i, citation(s["source"], s["page"]), s["chunk_id"], s["score"], s["text"][:160]]
        for i, s in enumerate(result["sources"], 1)
    ]
    return "\n\n".join(
        [
            f"# rag-query\n\n**Question:** {question}",
            f"**Answer:** {result['answer']}",
            table(["#", "citation", "chunk", "score", "text"], rows),
        ]
    )


@flow(name=FLOW, log_prints=False)
def rag_query(
    question: str, config: str = DEFAULT_CONFIG, overrides: list[str] | None = None, k: int | None = None
) -> dict:
    """{"answer", "sources": [{"source", "page", "chunk_id", "score", "text"}]}."""
    cfg = load_config(rag.RagConfig, config, overrides)
    sources = retrieve(question, cfg, k)
    result = {"answer": generate_answer(question, sources, cfg), "sources": sources}
    publish_summary(FLOW, summary_markdown(question, result))
    return result


def add_arguments(parser) -> None:
    parser.add_argument("question", nargs="?", help="the question to answer")
    parser.add_argument("--k", type=int, default=None, help="chunks to retrieve (default: retrieval.k)")
    parser.add_argument("--json", action="store_true", help='print {"answer", "sources"} as JSON')


def flow_kwargs(args, parser) -> dict:
    if not args.question or not args.question.strip():
        parser.error('a question is needed: python -m flows.rag_query "your question"')
    if args.k is not None and args.k < 1:
        parser.error(f"--k must be at least 1, got {args.k}")
    return {"question": args.question, "k": args.k}


def show(result: dict, args) -> None:
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    print(result["answer"])
    print()
    for i, s in enumerate(result["sources"], 1):
        print(f"{i}. {citation(s['source'], s['page'])}  score {s['score']}  {s['chunk_id']}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        rag_query,
        rag.RagConfig,
        DEFAULT_CONFIG,
        argv,
        description=__doc__.splitlines()[0],
        add_arguments=add_arguments,
        flow_kwargs=flow_kwargs,
        show=show,
    )


if __name__ == "__main__":
    sys.exit(main())
