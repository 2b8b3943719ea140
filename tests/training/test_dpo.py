"""DPO on the tiny model: reference without a second copy, evaluation that matches TRL's, the gate, SFT start."""

from __future__ import annotations

import json

import pytest
import torch

from tasks import publishing
from tasks.core import models
from tasks.core.config import ConfigError, load_config
from tasks.training import dpo
from tasks.training.config import DpoFinetuneConfig
from tasks.training.lora import freeze_and_apply_lora

POLITE, RUDE = "Thank you very much for asking.", "The quick brown fox jumps over the lazy dog."


def pairs(n: int, offset: int = 0) -> list[dict]:
    """A preference the tiny model can learn in a few steps: the polite reply over the off-topic one."""
    return [
        {
            "prompt": [{"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"}],
            "chosen": [{"role": "assistant", "content": POLITE}],
            "rejected": [{"role": "assistant", "content": RUDE}],
        }
        for i in range(offset, offset + n)
    ]


def tiny_config(tiny_model_dir, tmp_path, *overrides: str) -> DpoFinetuneConfig:
    return load_config(
        DpoFinetuneConfig,
        None,
        [
            f"model.name={tiny_model_dir}",
            "model.max_length=96",
            "dpo.max_prompt_tokens=64",
            "train.max_steps=8",
            "train.batch_size=4",
            "train.learning_rate=0.002",
            "train.lr_scheduler=constant",
            "train.warmup_ratio=0.0",
            "train.logging_steps=4",
            "train.save_steps=4",
            "eval.batch_size=16",
            f"train.output_dir={tmp_path / 'checkpoints'}",
            "lora.r=8",
            "lora.alpha=16",
            *overrides,
        ],
    )


def policy(cfg: DpoFinetuneConfig):
    placement = models.resolve_placement("cpu")
    model, tokenizer, _ = models.load_base_model(cfg.model.name, placement)
    model = freeze_and_apply_lora(model, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules)
    return model, tokenizer, placement


def base_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" not in k}


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("dpo.beta=0", "dpo.beta: must be positive"),
        ("dpo.loss_type=kto", "dpo.loss_type: expected one of"),
        ("dpo.max_prompt_tokens=600", "dpo.max_prompt_tokens: must be smaller than model.max_length=512"),
        ("dpo.min_reward_accuracy=1.5", "dpo.min_reward_accuracy: must be in [0, 1)"),
        ("data.format=alpaca", "data.format: preference rows are detected per row"),
    ],
)
def test_bad_options_name_their_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        load_config(DpoFinetuneConfig, None, [override])


def test_shipped_configs_load():
    for name in ("dpo_demo", "dpo_hh_rlhf", "sft_then_dpo"):
        cfg = load_config(DpoFinetuneConfig, f"configs/{name}.yaml")
        assert cfg.dpo.max_prompt_tokens < cfg.model.max_length
    assert load_config(DpoFinetuneConfig, "configs/sft_then_dpo.yaml").init_adapter


# --- the quality gate -------------------------------------------------------------------------


def test_gate_needs_both_the_threshold_and_the_untrained_policy():
    assert dpo.quality_gate(base_accuracy=0.5, trained_accuracy=0.62, threshold=0.5).passed
    failed = dpo.quality_gate(base_accuracy=0.5, trained_accuracy=0.5, threshold=0.5)
    assert not failed.passed and "0.500 does not beat dpo.min_reward_accuracy=0.500" in failed.reason
    failed = dpo.quality_gate(base_accuracy=0.7, trained_accuracy=0.65, threshold=0.6)
    assert not failed.passed and "does not beat the untrained policy's 0.700" in failed.reason


def test_ties_count_half():
    zeros = dpo.PairLogps(torch.tensor([-3.0, -4.0]), torch.tensor([-5.0, -1.0]))
    assert dpo.preference_metrics(zeros, zeros, beta=0.1)["rewards/accuracies"] == 0.5
    moved = dpo.PairLogps(torch.tensor([-2.0, -4.0]), torch.tensor([-5.0, -1.0]))
    metrics = dpo.preference_metrics(moved, zeros, beta=0.1)
    assert metrics["rewards/accuracies"] == 0.75 and metrics["rewards/margins"] == pytest.approx(0.05)
    assert metrics["logps/chosen"] == -3.0 and metrics["logps/rejected"] == -3.0


# --- training and evaluation ------------------------------------------------------------------


def test_dpo_learns_the_preference_against_a_frozen_reference(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path)
    model, tokenizer, placement = policy(cfg)
    before = base_weights(model)
    trainer = dpo.build_trainer(
        model, tokenizer, pairs(32), pairs(12, offset=100), cfg, placement, tmp_path / "checkpoints"
    )
    assert trainer.ref_model is None  # no second copy: the reference is the policy with its adapter off
    base = dpo.evaluate_untrained(trainer, cfg.dpo.beta)
    assert base.metrics["rewards/accuracies"] == 0.5 and base.metrics["rewards/margins"] == 0.0
    untrained = dpo.score_pairs(trainer, reference=False)  # the untrained LoRA policy *is* the reference
    assert torch.equal(untrained.chosen, base.reference.chosen)
    assert torch.equal(untrained.rejected, base.reference.rejected)

    result = dpo.train_dpo(trainer, tmp_path / "checkpoints", resume=False)
    assert result.steps == 8
    trained = dpo.evaluate_trained(trainer, cfg.dpo.beta, base.reference)
    assert trained.metrics["rewards/accuracies"] > 0.9
    assert trained.metrics["rewards/margins"] > 0
    assert dpo.quality_gate(base.metrics["rewards/accuracies"], trained.metrics["rewards/accuracies"], 0.5).passed

    # The reference did not move: base weights untouched, reference scores identical to before training.
    assert all(torch.equal(before[k], v) for k, v in base_weights(model).items())
    assert torch.allclose(dpo.score_pairs(trainer, reference=True).chosen, base.reference.chosen, atol=1e-5)

    # Our per-pair evaluation is TRL's own, with ties counted half (there are none after training).
    trl_metrics = trainer.evaluate()
    for name in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "logps/chosen", "logps/rejected"):
        assert trained.metrics[name] == pytest.approx(trl_metrics[f"eval_{name}"], rel=1e-4, abs=1e-5)


def test_ipo_loss_and_precomputed_reference(tiny_model_dir, tmp_path):
    cfg = tiny_config(
        tiny_model_dir, tmp_path, "dpo.loss_type=ipo", "dpo.precompute_ref_log_probs=true", "train.max_steps=4"
    )
    model, tokenizer, placement = policy(cfg)
    trainer = dpo.build_trainer(
        model, tokenizer, pairs(16), pairs(8, offset=50), cfg, placement, tmp_path / "checkpoints"
    )
    assert "ref_chosen_logps" in trainer.eval_dataset.column_names
    precomputed = dpo.score_pairs(trainer, reference=True)
    with model.disable_adapter():  # the same reference, scored on the fly
        on_the_fly = dpo.score_pairs(trainer, reference=False)
    assert torch.allclose(precomputed.chosen, on_the_fly.chosen, atol=1e-4)
    base = dpo.evaluate_untrained(trainer, cfg.dpo.beta)
    dpo.train_dpo(trainer, tmp_path / "checkpoints", resume=False)
    trained = dpo.evaluate_trained(trainer, cfg.dpo.beta, base.reference)
    assert trained.metrics["rewards/margins"] != 0.0


def test_training_resumes_from_the_last_checkpoint(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=4")
    model, tokenizer, placement = policy(cfg)
    trainer = dpo.build_trainer(
        model, tokenizer, pairs(16), pairs(4, offset=50), cfg, placement, tmp_path / "checkpoints"
    )
    dpo.train_dpo(trainer, tmp_path / "checkpoints", resume=False)
    assert (tmp_path / "checkpoints" / "checkpoint-4").is_dir()
    longer = tiny_config(tiny_model_dir, tmp_path, "train.max_steps=8")
    model, tokenizer, placement = policy(longer)
    trainer = dpo.build_trainer(
        model, tokenizer, pairs(16), pairs(4, offset=50), longer, placement, tmp_path / "checkpoints"
    )
    result = dpo.train_dpo(trainer, tmp_path / "checkpoints", resume=True)
    assert result.resumed_from_step == 4 and result.steps == 8


def test_starting_from_an_sft_adapter_keeps_that_adapter_as_the_reference(tiny_model_dir, tmp_path):
    from peft import PeftModel

    cfg = tiny_config(tiny_model_dir, tmp_path)
    # An "SFT" adapter whose weights are not zero, so it really differs from the base model.
    sft, tokenizer, placement = policy(cfg)
    torch.manual_seed(0)
    for name, parameter in sft.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.05)
    sft.save_pretrained(tmp_path / "sft")

    base_model, tokenizer, _ = models.load_base_model(cfg.model.name, placement)
    start = PeftModel.from_pretrained(base_model, tmp_path / "sft", is_trainable=True)
    trainer = dpo.build_trainer(
        start, tokenizer, pairs(32), pairs(12, offset=100), cfg, placement, tmp_path / "checkpoints"
    )
    assert dpo.reference_is_frozen_adapter(start)  # TRL copied the SFT adapter as the frozen "ref"
    base = dpo.evaluate_untrained(trainer, cfg.dpo.beta)
    untrained = dpo.score_pairs(trainer, reference=False)
    assert torch.equal(untrained.chosen, base.reference.chosen)  # the policy starts exactly at its reference
    with torch.no_grad(), start.disable_adapter():
        bare = dpo.score_pairs(trainer, reference=False)
    assert not torch.allclose(bare.chosen, base.reference.chosen)  # the reference is the SFT adapter, not the base

    dpo.train_dpo(trainer, tmp_path / "checkpoints", resume=False)
    trained = dpo.evaluate_trained(trainer, cfg.dpo.beta, base.reference)
    assert trained.metrics["rewards/accuracies"] > 0.9
    assert torch.allclose(dpo.score_pairs(trainer, reference=True).chosen, base.reference.chosen, atol=1e-5)

    folder = publishing.save_adapter(
        start, tokenizer, tmp_path / "out", str(tiny_model_dir), None, "dpo-finetune", "run1"
    )
    assert not (folder / "ref").exists()  # only the trained adapter is published
    assert json.loads((folder / "ftllm.json").read_text())["base_model"] == str(tiny_model_dir)
    reloaded_base, _, _ = models.load_base_model(cfg.model.name, placement)
    reloaded = PeftModel.from_pretrained(reloaded_base, folder).eval()
    batch = tokenizer(["Question number 7: what is 7 plus 7?"], return_tensors="pt")
    with torch.no_grad():
        start.eval()
        expected = start(**batch).logits
        assert torch.allclose(reloaded(**batch).logits, expected, atol=1e-5)
