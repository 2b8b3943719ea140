"""The registry's champion scored on this run's held-out data, exactly as the run's own adapter was.

The champion's adapter is loaded beside the trained one on the same base, made active for one
scoring pass, and removed again: the same rows, the same code, and for DPO the same frozen reference
scores, so the two numbers differ only by the adapter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from tasks import publishing
from tasks.core.config import ConfigError
from tasks.training import dpo
from tasks.training.config import DpoFinetuneConfig, LoraFinetuneConfig
from tasks.training.data import Row, tokenize_rows
from tasks.training.evaluation import EvalReport, completion_loss
from tasks.training.lora import require_same_base

CHALLENGED = "champion"  # the adapter name the champion gets while it is scored


@contextlib.contextmanager
def champion_active(model, folder: Path, model_name: str) -> Iterator[None]:
    """The champion's adapter active in `model` for the block; the trained adapter active again afterwards."""
    try:
        require_same_base(folder, "the @champion adapter", model_name, key="publish.promote")
    except ConfigError as why:
        raise publishing.NotComparable(str(why)) from None
    trained = model.active_adapter
    model.load_adapter(str(folder), adapter_name=CHALLENGED, is_trainable=False)
    try:
        model.set_adapter(CHALLENGED, inference_mode=True)
        yield
    finally:
        model.set_adapter(trained)
        model.delete_adapter(CHALLENGED)


def sft_challenge(
    model, tokenizer, eval_rows: list[Row], evaluation: EvalReport, cfg: LoraFinetuneConfig
) -> tuple[publishing.Score, Callable[[Path], float]]:
    """(the trained adapter's held-out loss, how to score a champion's adapter on the same rows)."""
    examples = tokenize_rows(eval_rows, tokenizer, cfg.model.max_length).examples

    def champion_loss(folder: Path) -> float:
        with champion_active(model, folder, cfg.model.name):
            was_training = model.training
            model.eval()
            try:
                return completion_loss(model, examples, tokenizer.pad_token_id, cfg.eval.batch_size)[0]
            finally:
                model.train(was_training)

    return publishing.Score("eval_loss", evaluation.eval_loss, higher_is_better=False), champion_loss


def dpo_challenge(
    trainer, trained: dpo.Evaluation, cfg: DpoFinetuneConfig
) -> tuple[publishing.Score, Callable[[Path], float]]:
    """(the trained policy's held-out reward accuracy, how to score a champion's adapter on the same pairs)."""

    def champion_accuracy(folder: Path) -> float:
        with champion_active(trainer.model, folder, cfg.model.name):
            policy = dpo.score_pairs(trainer, reference=False)
        return dpo.preference_metrics(policy, trained.reference, cfg.dpo.beta)["rewards/accuracies"]

    accuracy = trained.metrics["rewards/accuracies"]
    return publishing.Score("reward_accuracy", accuracy, higher_is_better=True), champion_accuracy
