"""Scoring a champion's adapter beside the trained one: the same numbers for the same adapter, the
trained adapter untouched afterwards, and a champion of another base refused as not comparable."""

from __future__ import annotations

import json

import pytest
import torch

from tasks import publishing
from tasks.core.config import load_config
from tasks.core.models import load_base_model, resolve_placement
from tasks.training import freeze_and_apply_lora
from tasks.training.challenge import sft_challenge
from tasks.training.config import LoraFinetuneConfig
from tasks.training.data import tokenize_rows
from tasks.training.evaluation import evaluate_against_base

ROWS = [
    {
        "prompt": [{"role": "user", "content": f"Name the color {c}."}],
        "completion": [{"role": "assistant", "content": f"The color is {c}."}],
    }
    for c in ("red", "blue")
]


def test_the_same_adapter_scores_the_same_and_another_base_is_not_comparable(tiny_model_dir, tmp_path):
    cfg = load_config(
        LoraFinetuneConfig, "configs/lora_demo.yaml", [f"model.name={tiny_model_dir}", "model.max_length=64"]
    )
    torch.manual_seed(0)
    model, tokenizer, _ = load_base_model(str(tiny_model_dir), resolve_placement("cpu", "fp32"))
    model = freeze_and_apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["all-linear"])
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # an adapter that changes the loss
    examples = tokenize_rows(ROWS, tokenizer, 64).examples
    evaluation = evaluate_against_base(model, tokenizer, examples, [], batch_size=2)
    champion = tmp_path / "champion"
    model.save_pretrained(champion)
    (champion / "ftllm.json").write_text(json.dumps({"base_model": str(tiny_model_dir)}))

    candidate, score_champion = sft_challenge(model, tokenizer, ROWS, evaluation, cfg)
    assert candidate.metric == "eval_loss" and not candidate.higher_is_better
    assert evaluation.eval_loss != pytest.approx(evaluation.base_eval_loss)
    assert score_champion(champion) == pytest.approx(evaluation.eval_loss, abs=1e-5)
    assert model.active_adapter == "default" and list(model.peft_config) == ["default"]
    again = evaluate_against_base(model, tokenizer, examples, [], batch_size=2)
    assert again.eval_loss == pytest.approx(evaluation.eval_loss, abs=1e-6)  # the trained adapter is back

    (champion / "ftllm.json").write_text(json.dumps({"base_model": "HuggingFaceTB/SmolLM2-360M-Instruct"}))
    with pytest.raises(publishing.NotComparable, match="SmolLM2-360M-Instruct"):
        score_champion(champion)
    assert list(model.peft_config) == ["default"]
