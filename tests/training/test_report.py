"""The typed run results, told as the Prefect summary artifact and as the command line's lines; a failed run's record."""

from __future__ import annotations

import json
from dataclasses import dataclass

from tasks.core.models import Placement
from tasks.core.reporting import failure_markdown
from tasks.publishing import PromotionDecision, Published, Verification
from tasks.training import report
from tasks.training.data import SftSummary, TokenSummary
from tasks.training.dpo import Gate
from tasks.training.evaluation import EvalReport
from tasks.training.lora import ParamCounts
from tasks.training.preferences import PreferenceSummary
from tasks.training.results import DpoRun, LoraRun, PreferenceEvaluation, Publication, RunSetup
from tasks.training.trainer import TrainResult

SETUP = RunSetup("configs/x.yaml", ["lora.r=8"], Placement("cpu", "fp32"), "http://127.0.0.1:5000/#/runs/abc")
TRAIN = TrainResult(30, 10, 1.23456, 12.34, 4000, 324.1, "/tmp/checkpoints", [(5, 2.0), (30, 1.23456)])
PUBLISHED = Published("mlflow://colors/1", "MLflow Model Registry: colors, version 1")
VERIFIED = Verification(True, True, 2.5e-6, 24, "The color | is red", "")
METRICS = {
    "rewards/accuracies": 0.8,
    "rewards/margins": 0.12345,
    "rewards/chosen": 0.1,
    "rewards/rejected": -0.2,
    "logps/chosen": -10.5,
    "logps/rejected": -12.25,
    "pairs": 40.0,
}


def lora_run(verification: Verification | None = VERIFIED) -> LoraRun:
    return LoraRun(
        "lora-finetune",
        SETUP,
        data=SftSummary(216, 24, "alpaca", 1, "0123456789abcdef"),
        params=ParamCounts("fresh LoRA adapter", 1_234, 567_890),
        tokens=TokenSummary(216, 2, 1, 9_999),
        train=TRAIN,
        evaluation=EvalReport(1.5, 2.5, 100, [{"prompt": "Name red.", "base": "Blue", "adapter": "The color is red."}]),
        publication=Publication(PUBLISHED, verification),
    )


def dpo_run(reported: list[str]) -> DpoRun:
    return DpoRun(
        "dpo-finetune",
        SETUP,
        data=PreferenceSummary(360, 40, {"hh_rlhf": 400}, len(reported), 0, 3, "fedcba9876543210", reported),
        params=ParamCounts("fresh LoRA adapter", 10, 100),
        train=TRAIN,
        evaluation=PreferenceEvaluation({**METRICS, "rewards/accuracies": 0.5}, METRICS),
        gate=Gate(True, "held-out reward accuracy 0.800 beats dpo.min_reward_accuracy=0.500"),
        publication=Publication(PUBLISHED, VERIFIED),
    )


def test_lora_summary_has_every_section_and_number():
    markdown = report.lora_markdown(lora_run())
    assert markdown.startswith("# lora-finetune: verified\n\nMLflow: http://127.0.0.1:5000/#/runs/abc  \n\n")
    assert "Placement: cpu / fp32" in markdown
    for expected in (
        "## Data",
        "| 216 | 24 | alpaca | 1 | 9999 | 2 | 1 |",
        "## Model",
        "| 1,234 | 567,890 | 0.22% |",
        "## Training",
        "| 30 | 10 | 1.2346 | 12.3 | 324 |",
        "## Held-out evaluation",
        "| base | 2.5000 | 12.18 |",
        "| adapter | 1.5000 | 4.48 |",
        "## Samples",
        "| Name red. | Blue | The color is red. |",
        "## Published\n\n`mlflow://colors/1` (MLflow Model Registry: colors, version 1)",
        "## Verification",
        "| True | True | 24 | 2.50e-06 | The color \\| is red |",
    ):
        assert expected in markdown, expected
    unverified = report.lora_markdown(lora_run(verification=None))
    assert unverified.startswith("# lora-finetune: published") and "## Verification" not in unverified


def test_lora_terminal_lines():
    assert report.lora_terminal(lora_run()).splitlines() == [
        "lora-finetune completed: 30 steps in 12s, 324 tokens/s",
        "  held-out loss: base 2.5000 -> adapter 1.5000 (perplexity 12.18 -> 4.48)",
        "  published: mlflow://colors/1",
        "  verified: True (max |Δlogit| 2.50e-06)",
        "  MLflow: http://127.0.0.1:5000/#/runs/abc",
    ]


def test_the_champion_decision_is_told():
    run = lora_run()
    reason = "eval_loss 1.5000 is not at least as good as the champion's 1.2000 (lower is better)"
    run.champion = PromotionDecision(False, reason, "mlflow://colors/2", "mlflow://colors/1", "eval_loss", 1.5, 1.2)
    assert f"  did not take @champion: {reason}" in report.lora_terminal(run).splitlines()
    assert f"Champion: did not take @champion: {reason}" in report.lora_markdown(run)


def test_dpo_summary_lists_reported_rows_and_the_gate():
    reported = [f"prefs.jsonl row {i}: chosen equals rejected" for i in range(1, 24)]
    markdown = report.dpo_markdown(dpo_run(reported))
    for expected in (
        "# dpo-finetune: verified",
        "## Preference pairs",
        "| 360 | 40 | {'hh_rlhf': 400} | 23 | 0 | 3 |",
        "Reported rows:\n\n- prefs.jsonl row 1: chosen equals rejected\n",
        "- prefs.jsonl row 20: chosen equals rejected\n- ... and 3 more",
        "## Policy",
        "| fresh LoRA adapter | 10 | 100 |",
        "| 30 | 10 | 1.2346 | 12.3 | 0.62 |",
        "## Held-out pairs (40): the implicit reward, before and after",
        "| untrained | 0.500 | 0.1235 | 0.1000 | -0.2000 | -10.50 | -12.25 |",
        "| trained | 0.800 | 0.1235 | 0.1000 | -0.2000 | -10.50 | -12.25 |",
        "Quality gate: **passed**: held-out reward accuracy 0.800 beats",
        "## Verification",
    ):
        assert expected in markdown, expected
    assert "row 21" not in markdown
    assert "Reported rows" not in report.dpo_markdown(dpo_run([]))
    assert report.dpo_terminal(dpo_run([])).splitlines()[:2] == [
        "dpo-finetune completed: 30 steps in 12s",
        "  held-out reward accuracy: untrained 0.500 -> trained 0.800 (margin 0.1235, 40 pairs)",
    ]


@dataclass
class OtherRun:
    flow: str
    error: str
    url: str | None = None


def test_a_failed_run_records_what_it_got_done():
    run = LoraRun("lora-finetune", SETUP, data=SftSummary(216, 24, "alpaca", 0, "0123456789abcdef"))
    run.error = "DataError: every training row is longer than model.max_length=64"
    markdown = failure_markdown(run)
    assert markdown.startswith(
        "# lora-finetune: FAILED\n\n**Reason:** DataError: every training row is longer than model.max_length=64\n\n"
        "## What the run got done\n\n```json\n"
    )
    done = json.loads(markdown.split("```json\n")[1].split("\n```")[0])
    assert done == {
        "setup": {
            "config": "configs/x.yaml",
            "overrides": ["lora.r=8"],
            "placement": {"device": "cpu", "precision": "fp32"},
            "mlflow": "http://127.0.0.1:5000/#/runs/abc",
        },
        "data": {
            "train_rows": 216,
            "eval_rows": 24,
            "format": "alpaca",
            "bad_rows": 0,
            "fingerprint": "0123456789abcdef",
        },
    }
    # Any flow's record reads the same.
    assert failure_markdown(OtherRun("chat-app", "OSError: port in use", "x")).startswith(
        "# chat-app: FAILED\n\n**Reason:** OSError: port in use"
    )
