"""`rag-eval`: retrieval quality on a question file: hit@k, MRR and mean chunk length, logged to MLflow.

    load_questions → evaluate_retrieval → MLflow (experiment rag-eval) + summary

    python -m flows.rag_eval --qa benchmarks/qa/libtasn1.jsonl [--k 5] [--json]

A question file has one JSON object a line: {"id", "question", "answers": [short strings], "page"}.
A hit is a retrieved chunk that contains one of the answers (ignoring case and line breaks).
"""

from __future__ import annotations

import json
import sys

from prefect import flow, get_run_logger

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from tasks.core import tracking
from tasks.core.cli import run_cli
from tasks.core.config import load_config
from tasks.core.reporting import publish_summary, table
from tasks.core.steps import step
from tasks.rag import query as rag

FLOW = "rag-eval"
DEFAULT_CONFIG = "configs/rag.yaml"

load_questions = step(rag.load_questions)
evaluate_retrieval = step(rag.evaluate_retrieval)


def summary_markdown(qa: str, result: dict) -> str:
    rows = [
        [r["id"], r["question"], r["rank"] or "miss", r["page"], r["retrieved_pages"]] for r in result["per_question"]
    ]
    head = (
        f"# rag-eval: hit@{result['k']} {result['hit_at_k']:.3f}, MRR {result['mrr']:.3f}\n\n"
        f"{result['questions']} questions from `{qa}`; mean retrieved chunk {result['mean_chunk_chars']:.0f} characters"
    )
    errors = "\n".join(f"- {e}" for e in result["skipped"])
    return "\n\n".join(
        [head]
        + ([f"## Skipped lines\n{errors}"] if errors else [])
        + [table(["id", "question", "first hit", "page", "retrieved pages"], rows)]
    )


@flow(name=FLOW, log_prints=False)
def rag_eval(qa: str, config: str = DEFAULT_CONFIG, overrides: list[str] | None = None, k: int | None = None) -> dict:
    cfg = load_config(rag.RagConfig, config, overrides)
    questions, errors = load_questions(qa)
    for error in errors:  # a bad line is reported and skipped; the other questions are scored
        get_run_logger().warning("skipped %s", error)
    if not questions:
        raise ValueError(f"{qa}: no usable questions" + (f" ({errors[0]})" if errors else ""))
    result = evaluate_retrieval(questions, cfg, k)
    result["skipped"] = errors
    with tracking.start_run(FLOW, cfg, tags={"qa.file": qa}) as run:
        tracking.log_metrics(
            {
                "hit_at_k": result["hit_at_k"],
                "mrr": result["mrr"],
                "mean_chunk_chars": result["mean_chunk_chars"],
                "questions": result["questions"],
                "k": result["k"],
                "mean_latency_s": result["mean_latency_s"],
                **({"page_hit_at_k": result["page_hit_at_k"]} if result["page_hit_at_k"] is not None else {}),
            }
        )
        import mlflow

        mlflow.log_dict(result, "rag_eval.json")
        result["mlflow_run_id"] = run.info.run_id
    publish_summary(FLOW, summary_markdown(qa, result))
    return result


def add_arguments(parser) -> None:
    parser.add_argument("--qa", required=False, help="question file (JSONL)")
    parser.add_argument("--k", type=int, default=None, help="chunks retrieved per question (default: retrieval.k)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def flow_kwargs(args, parser) -> dict:
    if not args.qa:
        parser.error("--qa QUESTIONS.jsonl is required")
    if args.k is not None and args.k < 1:
        parser.error(f"--k must be at least 1, got {args.k}")
    return {"qa": args.qa, "k": args.k}


def show(result: dict, args) -> None:
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    for error in result["skipped"]:
        print(f"skipped {error}")
    print(
        f"hit@{result['k']} {result['hit_at_k']:.3f}  MRR {result['mrr']:.3f}  "
        f"mean chunk {result['mean_chunk_chars']:.0f} chars  ({result['questions']} questions)"
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        rag_eval,
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
