"""`rag-eval`: retrieval quality on a question file: hit@k, MRR, page hit@k and mean chunk length;
with --answers also the full rag-query on every question, its answers and citations checked. Logged to MLflow.

    load_questions → evaluate_retrieval [→ evaluate_answers] → MLflow (experiment rag-eval) + summary

    python -m flows.rag_eval --qa benchmarks/qa/libtasn1.jsonl [--k 5] [--answers] [--json]

A question file has one JSON object a line: {"id", "question", "answers": [short strings], "page"}.
A hit is a retrieved chunk that contains one of the answers (ignoring case and line breaks).
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from tasks.core import tracking
from tasks.core.config import load_config
from tasks.core.reporting import publish_summary
from tasks.core.steps import step
from tasks.rag import evaluation, report
from tasks.rag.cli import DEFAULT_CONFIG, add_k_and_json, checked_k, run_rag_cli
from tasks.rag.config import RagConfig
from tasks.rag.evaluation import RagEvalResult

FLOW = "rag-eval"

load_questions = step(evaluation.load_questions)
evaluate_retrieval = step(evaluation.evaluate_retrieval)
evaluate_answers = step(evaluation.evaluate_answers)


@flow(name=FLOW, log_prints=False)
def rag_eval(
    qa: str,
    config: str = DEFAULT_CONFIG,
    overrides: list[str] | None = None,
    k: int | None = None,
    answers: bool = False,
) -> dict:
    cfg = load_config(RagConfig, config, overrides)
    questions, errors = load_questions(qa)
    for error in errors:  # a bad line is reported and skipped; the other questions are scored
        get_run_logger().warning("skipped %s", error)
    if not questions:
        raise ValueError(f"{qa}: no usable questions" + (f" ({errors[0]})" if errors else ""))
    result = RagEvalResult(**evaluate_retrieval(questions, cfg, k), skipped=errors)
    if answers:
        result.answer_mode = evaluate_answers(questions, cfg, k)
    with tracking.start_run(FLOW, cfg, tags={"qa.file": qa}) as run:
        tracking.log_metrics(result.metrics())
        import mlflow

        mlflow.log_dict(result.as_dict(), "rag_eval.json")
        result.mlflow_run_id = run.info.run_id
    publish_summary(FLOW, report.eval_markdown(qa, result))
    return result.as_dict()


def add_arguments(parser) -> None:
    parser.add_argument("--qa", required=False, help="question file (JSONL)")
    add_k_and_json(parser, "chunks retrieved per question (default: retrieval.k)", "print the result as JSON")
    parser.add_argument(
        "--answers",
        action="store_true",
        help="also answer every question with the chat model (llm.*) and check the answer and its cited pages",
    )


def flow_kwargs(args, parser) -> dict:
    if not args.qa:
        parser.error("--qa QUESTIONS.jsonl is required")
    return {"qa": args.qa, "k": checked_k(args, parser), "answers": args.answers}


def print_text(result: dict) -> None:
    report.print_eval(RagEvalResult(**result))


def main(argv: list[str] | None = None) -> int:
    return run_rag_cli(rag_eval, argv, add_arguments, flow_kwargs, print_text)


if __name__ == "__main__":
    sys.exit(main())
