"""`feedback-export`'s work: stored judgements → deduplicated preference pairs → train.jsonl / eval.jsonl.

The files are in the prompt/chosen/rejected format `dpo-finetune` reads (tasks/training/preferences.py),
each row also naming the versions that wrote its replies. A malformed stored row is reported (its
id and what is wrong) and skipped; the others are exported.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.chat.feedback.config import ExportOptions
from tasks.chat.feedback.pairing import Pair, Pairing, make_pairs, split_pairs, version_stats
from tasks.chat.feedback.records import Judgement
from tasks.chat.feedback.store import FeedbackStore, as_judgement
from tasks.core.defaults import feedback_dataset_dir
from tasks.core.reporting import table


@dataclass
class ExportResult:
    judgements: int  # rows read from the database, malformed ones included
    malformed: list[str]  # "row ID: reason" for every row skipped
    pairs: int
    train_pairs: int
    eval_pairs: int
    ties_dropped: int
    duplicates_removed: int
    lone_ratings: int
    pairs_per_version: dict[str, int]  # pairs whose chosen reply each version wrote
    versions: dict[str, dict]  # per version: judgements received, thumbs, compare record, win rate
    train_path: str
    eval_path: str
    fingerprint: str = ""
    mlflow_run_id: str | None = None

    def metrics(self) -> dict[str, float]:
        return {
            "feedback_judgements": self.judgements,
            "feedback_malformed_rows": len(self.malformed),
            "feedback_pairs": self.pairs,
            "feedback_train_pairs": self.train_pairs,
            "feedback_eval_pairs": self.eval_pairs,
            "feedback_ties_dropped": self.ties_dropped,
            "feedback_duplicates_removed": self.duplicates_removed,
            "feedback_lone_ratings": self.lone_ratings,
        }

    def as_dict(self) -> dict:
        return asdict(self)


def read_judgements(store: FeedbackStore) -> tuple[list[Judgement], list[str], int]:
    """(valid judgements, 'row ID: reason' for each malformed row, rows read)."""
    judgements, malformed, read = [], [], 0
    for row in store.rows():
        read += 1
        try:
            judgements.append(as_judgement(row))
        except (ValueError, KeyError, TypeError) as error:
            malformed.append(f"row {row.get('id')}: {error}")
    return judgements, malformed, read


def _write_jsonl(path: Path, pairs: list[Pair]) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as out:
        for pair in pairs:
            out.write(json.dumps(pair.row(), ensure_ascii=False) + "\n")
    partial.replace(path)  # a dpo-finetune reading meanwhile sees the old file or the new one, never half


def export_pairs(store: FeedbackStore, options: ExportOptions) -> ExportResult:
    judgements, malformed, read = read_judgements(store)
    pairing: Pairing = make_pairs(judgements)
    if len(pairing.pairs) < options.min_pairs:
        raise ValueError(
            f"{store.shown_url}: {len(pairing.pairs)} preference pair(s) from {read} judgement(s) "
            f"(ties dropped {pairing.ties_dropped}, lone ratings {pairing.lone_ratings}, malformed {len(malformed)}); "
            f"export.min_pairs={options.min_pairs}"
        )
    train, held_out = split_pairs(pairing.pairs, options.eval_fraction, options.seed)
    folder = Path(options.output_dir) if options.output_dir else feedback_dataset_dir()
    folder.mkdir(parents=True, exist_ok=True)
    train_path, eval_path = folder / "train.jsonl", folder / "eval.jsonl"
    _write_jsonl(train_path, train)
    _write_jsonl(eval_path, held_out)
    digest = hashlib.sha256(train_path.read_bytes() + eval_path.read_bytes()).hexdigest()[:16]
    return ExportResult(
        judgements=read,
        malformed=malformed,
        pairs=len(pairing.pairs),
        train_pairs=len(train),
        eval_pairs=len(held_out),
        ties_dropped=pairing.ties_dropped,
        duplicates_removed=pairing.duplicates_removed,
        lone_ratings=pairing.lone_ratings,
        pairs_per_version=pairing.pairs_per_version,
        versions={v: s.as_dict() for v, s in sorted(version_stats(judgements).items())},
        train_path=str(train_path),
        eval_path=str(eval_path),
        fingerprint=digest,
    )


def _metric_name(version: str) -> str:
    """A version as part of an MLflow metric name: runs of anything but letters, digits, '.', '-'
    become one '_' (MLflow also refuses names that read as other file paths, such as '//')."""
    return re.sub(r"[^\w.\-]+", "_", version).strip("_")[-150:]


def _frame(path: str):
    import pandas as pd

    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return pd.DataFrame(
        [
            {
                "prompt": json.dumps(r["prompt"], ensure_ascii=False),
                "chosen": r["chosen"][0]["content"],
                "rejected": r["rejected"][0]["content"],
                "chosen_version": r["chosen_version"],
                "rejected_version": r["rejected_version"],
                "source": r["source"],
            }
            for r in rows
        ],
        columns=["prompt", "chosen", "rejected", "chosen_version", "rejected_version", "source"],
    )


def log_dataset(result: ExportResult) -> None:
    """Into the active MLflow run: both files as dataset inputs, the counts, and the per-version record."""
    import mlflow

    for path, context in ((result.train_path, "training"), (result.eval_path, "evaluation")):
        dataset = mlflow.data.from_pandas(
            _frame(path), source=Path(path).as_uri(), name=f"feedback-{context}", digest=result.fingerprint
        )
        mlflow.log_input(dataset, context=context, tags={"fingerprint": result.fingerprint})
    metrics = result.metrics()
    for version, count in result.pairs_per_version.items():
        metrics[f"pairs_chosen.{_metric_name(version)}"] = count
    for version, stats in result.versions.items():
        metrics[f"judgements.{_metric_name(version)}"] = stats["judgements"]
        if stats["win_rate"] is not None:
            metrics[f"win_rate.{_metric_name(version)}"] = stats["win_rate"]
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    mlflow.set_tags({"dataset.fingerprint": result.fingerprint})
    mlflow.log_dict({"versions": result.versions, "malformed": result.malformed}, "feedback_versions.json")
    mlflow.log_artifact(result.train_path, "dataset")
    mlflow.log_artifact(result.eval_path, "dataset")


def summary_markdown(result: ExportResult) -> str:
    counts = table(["count", "value"], [(k.removeprefix("feedback_"), v) for k, v in result.metrics().items()])
    versions = table(
        ["version", "judgements", "up", "down", "wins", "losses", "ties", "win rate", "pairs chosen"],
        [
            (
                v,
                s["judgements"],
                s["up"],
                s["down"],
                s["wins"],
                s["losses"],
                s["ties"],
                s["win_rate"],
                result.pairs_per_version.get(v, 0),
            )
            for v, s in result.versions.items()
        ],
    )
    skipped = "\n".join(f"- {m}" for m in result.malformed) or "none"
    return (
        f"# feedback-export\n\n{counts}\n\n## Per model version\n\n{versions}\n\n"
        f"## Malformed rows skipped\n\n{skipped}\n\nFiles: `{result.train_path}`, `{result.eval_path}`"
    )
