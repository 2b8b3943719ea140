"""Direct Preference Optimization: TRL's DPOTrainer on a LoRA policy, reward-accuracy evaluation, a quality gate.

DPO trains the policy to raise the likelihood of the preferred reply and lower that of the
dispreferred one, relative to a frozen reference; the policy then carries an implicit reward
    r(x, y) = beta * (log pi(y | x) - log pi_ref(y | x)).
There is no second copy of the weights: the reference is the same network with its LoRA adapter
disabled, or, when training starts from a published SFT adapter, a frozen copy of that adapter
(TRL adds it under the name "ref"; only the trained "default" adapter is ever saved).

Evaluation scores every held-out pair once with the reference and once with the policy, before and
after training, and reports TRL's metric names (`rewards/accuracies`, `rewards/margins`,
`rewards/chosen`, `rewards/rejected`, `logps/chosen`, `logps/rejected`). Unlike TRL, which counts
strict wins only (so an untrained policy, whose rewards are all exactly 0, scores 0.0), a tie
counts as half a win: the untrained policy scores 0.5, chance, and the gate compares like with like.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tasks.core import models, tracking
from tasks.core.models import Placement
from tasks.training.config import DpoFinetuneConfig
from tasks.training.memory import decide_checkpointing
from tasks.training.trainer import TrainResult, mlflow_log_callback, run_trainer, trainer_arguments, use_liger

log = logging.getLogger(__name__)


class QualityGateFailed(RuntimeError):
    """The trained adapter does not beat the gate: nothing is published."""


# --- training ---------------------------------------------------------------------------------


def build_trainer(
    model,
    tokenizer,
    train_rows: list[dict],
    eval_rows: list[dict],
    cfg: DpoFinetuneConfig,
    placement: Placement,
    output_dir: Path,
):
    """A DPOTrainer for the (LoRA-wrapped) policy; it tokenizes both splits with the chat template."""
    import datasets
    from trl import DPOConfig, DPOTrainer

    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    args = DPOConfig(
        **trainer_arguments(cfg.train, placement, output_dir),
        beta=cfg.dpo.beta,
        loss_type=[cfg.dpo.loss_type],
        max_length=cfg.model.max_length,  # prompt + reply; prompts were fitted to max_prompt_tokens already
        precompute_ref_log_probs=cfg.dpo.precompute_ref_log_probs,
        per_device_eval_batch_size=cfg.eval.batch_size,
        dataset_num_proc=None,
    )
    if use_liger(cfg.train, placement):
        models.apply_liger(model)
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_rows),
        eval_dataset=datasets.Dataset.from_list(eval_rows),
        processing_class=tokenizer,
        callbacks=[mlflow_log_callback()],
    )
    # A pair trains two rows (chosen, rejected) of up to model.max_length tokens each.
    decide_checkpointing(trainer, cfg.train, placement, cfg.model.max_length, loss_inputs, sequences_per_example=2)
    return trainer


def loss_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model inputs of TRL's DPO loss for a collated batch of pairs (the chosen rows, then the rejected).

    TRL's fused LM head (installed on the model by DPOTrainer) gives per-token log-probabilities of
    the reply tokens without full-vocabulary logits.
    """
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100),
        "fused_lm_head": True,
    }


def train_dpo(trainer, output_dir: Path, resume: bool) -> TrainResult:
    trainer.model.train()
    result = run_trainer(trainer, output_dir, resume)
    trainer.model.eval()
    return result


def reference_is_frozen_adapter(model) -> bool:
    """True when the reference is a frozen copy of a starting adapter (TRL's "ref"), not the bare base."""
    return "ref" in getattr(model, "peft_config", {})


# --- evaluation -------------------------------------------------------------------------------


@dataclass
class PairLogps:
    """Summed reply log-probabilities, one entry per held-out pair."""

    chosen: torch.Tensor
    rejected: torch.Tensor


def _policy_logps(trainer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    # The same computation as TRL's loss and reference pass, under the same autocast (TRL scores the
    # reference under it): in half precision the untrained policy then scores exactly as its reference.
    with trainer.accelerator.autocast():
        out = trainer.model(**loss_inputs(batch), use_cache=False)
    reply_positions = batch["completion_mask"].size(1) - 1
    return out.log_probs[:, -reply_positions:].sum(dim=1).chunk(2, dim=0)


@torch.no_grad()
def score_pairs(trainer, reference: bool) -> PairLogps:
    """Log-probabilities of every held-out reply under the policy, or under the reference."""
    model = trainer.model
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    loader = trainer.get_eval_dataloader()
    try:
        for number, batch in enumerate(loader, start=1):
            if reference and "ref_chosen_logps" in batch:  # precompute_ref_log_probs: scored once already
                c, r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
            elif reference:
                c, r = trainer.compute_ref_log_probs(model, batch)
            else:
                c, r = _policy_logps(trainer, batch)
            # Under torchrun each rank scores its share of the pairs: gather them, the repeats that
            # even out the last batch dropped, so every pair counts once (one process: a no-op).
            gather = trainer.accelerator.gather_for_metrics
            chosen.append(gather(c.float()).cpu())
            rejected.append(gather(r.float()).cpu())
            log.info(
                "scored held-out batch %d/%d with the %s", number, len(loader), "reference" if reference else "policy"
            )
    finally:
        model.train(was_training)
    return PairLogps(torch.cat(chosen), torch.cat(rejected))


def preference_metrics(policy: PairLogps, reference: PairLogps, beta: float) -> dict[str, float]:
    """TRL's metric names, averaged over pairs; a tie (equal implicit rewards) counts half a win."""
    chosen_rewards = beta * (policy.chosen - reference.chosen)
    rejected_rewards = beta * (policy.rejected - reference.rejected)
    margins = chosen_rewards - rejected_rewards
    wins = (margins > 0).float() + 0.5 * (margins == 0).float()
    return {
        "rewards/accuracies": wins.mean().item(),
        "rewards/margins": margins.mean().item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "logps/chosen": policy.chosen.mean().item(),
        "logps/rejected": policy.rejected.mean().item(),
        "pairs": float(len(margins)),
    }


@dataclass
class Evaluation:
    metrics: dict[str, float]  # TRL's names, unprefixed
    reference: PairLogps  # kept: the reference is frozen, so the after-training pass reuses it
    policy: PairLogps

    def prefixed(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{k}": v for k, v in self.metrics.items() if k != "pairs"}


def evaluate_untrained(trainer, beta: float) -> Evaluation:
    """Before training: score the held-out pairs with the reference, once.

    The untrained policy *is* its reference, by construction: a fresh LoRA adapter adds exactly 0
    (its B matrices start at zero), and a starting adapter's reference is TRL's frozen copy of it
    (tests check both, bit for bit). So its scores are the reference's, and every implicit reward is 0.
    """
    reference = score_pairs(trainer, reference=True)
    return Evaluation(preference_metrics(reference, reference, beta), reference, reference)


def evaluate_trained(trainer, beta: float, reference: PairLogps) -> Evaluation:
    """After training: score the held-out pairs with the policy; the frozen reference's scores are reused."""
    policy = score_pairs(trainer, reference=False)
    return Evaluation(preference_metrics(policy, reference, beta), reference, policy)


# --- the quality gate -------------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    passed: bool
    reason: str


def quality_gate(base_accuracy: float, trained_accuracy: float, threshold: float) -> Gate:
    """Publish only an adapter whose held-out reward accuracy beats the threshold and the untrained policy."""
    if trained_accuracy <= threshold:
        return Gate(
            False,
            f"held-out reward accuracy {trained_accuracy:.3f} does not beat dpo.min_reward_accuracy={threshold:.3f}",
        )
    if trained_accuracy <= base_accuracy:
        return Gate(
            False,
            f"held-out reward accuracy {trained_accuracy:.3f} does not beat the untrained policy's {base_accuracy:.3f}",
        )
    return Gate(
        True,
        f"held-out reward accuracy {trained_accuracy:.3f} beats dpo.min_reward_accuracy="
        f"{threshold:.3f} and the untrained policy's {base_accuracy:.3f}",
    )


def require_gate(base: Evaluation, trained: Evaluation, threshold: float) -> Gate:
    """The gate, recorded in MLflow tags; QualityGateFailed (nothing is published) when it fails."""
    gate = quality_gate(base.metrics["rewards/accuracies"], trained.metrics["rewards/accuracies"], threshold)
    tracking.set_tags({"gate.status": "passed" if gate.passed else "failed", "gate.reason": gate.reason})
    if not gate.passed:
        raise QualityGateFailed(f"quality gate failed, nothing published: {gate.reason}")
    return gate


def metrics_for_card(base: Evaluation, trained: Evaluation) -> dict[str, Any]:
    return {**base.prefixed("base_eval"), **trained.prefixed("eval"), "eval_pairs": int(trained.metrics["pairs"])}
