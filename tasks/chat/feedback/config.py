"""The options of collecting judgements (the chat app's `feedback` section) and of `feedback-export`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tasks.core.config import option, require

DATABASE_ENV = "FTLLM_FEEDBACK_DATABASE"


@dataclass
class FeedbackOptions:
    enabled: bool = option(
        True, help="collect thumbs up/down and compare-mode picks; off: no rating controls, nothing stored"
    )
    database: str | None = option(
        None,
        help=f"SQLAlchemy URL of the judgements table (e.g. postgresql+psycopg://host/db); default: ${DATABASE_ENV}, "
        "else a SQLite file FTLLM_DATA_DIR/feedback/judgements.db. Put a URL with a password in the "
        "environment variable, not in a config file",
    )
    notice: str = option(
        "Ratings you give here (thumbs up/down, compare picks) are stored with the conversation and the replies "
        "to train future versions of the model; no login name is stored. 'Clear my ratings' deletes this "
        "session's ratings.",
        help="shown with the disclaimer while collection is on",
    )

    def database_url(self) -> str | None:
        return self.database or os.environ.get(DATABASE_ENV) or None


@dataclass
class ExportOptions:
    output_dir: str | None = option(
        None, help="where train.jsonl and eval.jsonl go; default: the folder `data.train: feedback` reads"
    )
    eval_fraction: float = option(0.2, help="share of prompts held out for evaluation (whole prompts)")
    seed: int = option(0, help="seed of the prompt split")
    min_pairs: int = option(2, help="fail when fewer pairs than this come out (nothing to train on)")

    def __post_init__(self) -> None:
        require(0.0 < self.eval_fraction < 1.0, "export.eval_fraction", f"must be in (0, 1), got {self.eval_fraction}")
        require(self.min_pairs >= 1, "export.min_pairs", f"must be at least 1, got {self.min_pairs}")


@dataclass
class FeedbackExportConfig:
    """`feedback-export`: the chat app's judgements → preference pairs (train/eval) → MLflow dataset input."""

    feedback: FeedbackOptions = field(default_factory=FeedbackOptions)
    export: ExportOptions = field(default_factory=ExportOptions)
