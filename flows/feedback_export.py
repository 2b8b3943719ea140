"""`feedback-export`: the chat app's judgements become the preference dataset `dpo-finetune` reads.

read_judgements → make_pairs → split_and_write (train.jsonl / eval.jsonl) → MLflow dataset inputs + counts

python -m flows.feedback_export [--set feedback.database=postgresql+psycopg://...] [--set export.eval_fraction=0.2]
prefect deployment run feedback-export/nightly-feedback-export     (scheduled nightly in prefect.yaml)
python -m flows.dpo_finetune --config configs/dpo_feedback.yaml     (trains on them from the champion)
"""

from __future__ import annotations

import dataclasses
import sys

from prefect import flow, get_run_logger

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from tasks.chat.feedback import export
from tasks.chat.feedback.config import FeedbackExportConfig
from tasks.chat.feedback.store import FeedbackStore, safe_url
from tasks.core import tracking
from tasks.core.cli import run_cli
from tasks.core.config import load_config
from tasks.core.reporting import publish_summary
from tasks.core.steps import step

FLOW = "feedback-export"

export_pairs = step(export.export_pairs, io_retries=2)


@flow(name=FLOW, log_prints=False)
def feedback_export(config: str | None = None, overrides: list[str] | None = None) -> dict:
    cfg = load_config(FeedbackExportConfig, config, overrides)
    store = FeedbackStore(cfg.feedback.database_url())
    try:
        result = export_pairs(store, cfg.export)
    finally:
        store.close()
    for problem in result.malformed:  # a malformed row is reported and skipped; the others are exported
        get_run_logger().warning("skipped malformed judgement %s", problem)
    shown = dataclasses.replace(cfg, feedback=dataclasses.replace(cfg.feedback, database=store.shown_url))
    with tracking.start_run(FLOW, shown, tags={"feedback.database": safe_url(store.url)}) as run:
        export.log_dataset(result)
        result.mlflow_run_id = run.info.run_id
    publish_summary(FLOW, export.summary_markdown(result))
    return result.as_dict()


def print_text(result: dict, args) -> None:
    counts = ", ".join(f"{k.removeprefix('feedback_')} {v}" for k, v in export.ExportResult(**result).metrics().items())
    print(f"feedback-export: {counts}\n  train: {result['train_path']}\n  eval:  {result['eval_path']}")
    for problem in result["malformed"]:
        print(f"  skipped {problem}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(feedback_export, FeedbackExportConfig, None, argv, show=print_text)


if __name__ == "__main__":
    sys.exit(main())
