"""LoRA on a causal LM: freeze the base and add fresh adapters, or start from a published adapter."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import publishing
from tasks.core.config import ConfigError
from tasks.core.models import Placement
from tasks.training.config import DpoFinetuneConfig, LoraOptions, TrainOptions
from tasks.training.trainer import use_gradient_checkpointing

FRESH_ADAPTER = "fresh LoRA adapter"


@dataclass(frozen=True)
class ParamCounts:
    """What training starts from, and how much of the model it trains."""

    start: str  # a fresh adapter, or the published adapter it continues
    trainable: int
    total: int


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _counted(model, start: str) -> ParamCounts:
    return ParamCounts(start, *count_parameters(model))


def freeze_and_apply_lora(
    model, r: int, alpha: int, dropout: float, target_modules: list[str], gradient_checkpointing: bool = False
):
    """Freeze every base weight and wrap the model with fresh LoRA adapters."""
    from peft import LoraConfig, get_peft_model

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    # The frozen norms keep the model's dtype: RMSNorm already computes its statistics in fp32, and
    # an fp32 weight would make it return fp32, which a bf16/fp16 Linear rejects outside autocast
    # (generation, evaluation and DPO scoring run the model without it).
    if gradient_checkpointing:
        # Checkpointed blocks need an input that requires grad, or no gradient reaches the adapters.
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = "all-linear" if target_modules == ["all-linear"] else list(target_modules)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none", task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def apply_fresh_lora(model, lora: LoraOptions, train: TrainOptions, placement: Placement) -> tuple[Any, ParamCounts]:
    """Fresh adapters on the frozen base, checkpointing set up as the run will train."""
    peft_model = freeze_and_apply_lora(
        model,
        lora.r,
        lora.alpha,
        lora.dropout,
        lora.target_modules,
        gradient_checkpointing=use_gradient_checkpointing(train, placement),
    )
    return peft_model, _counted(peft_model, FRESH_ADAPTER)


def start_policy(model, cfg: DpoFinetuneConfig, placement: Placement, token: str | None) -> tuple[Any, ParamCounts]:
    """A fresh adapter (reference: adapter off), or the `init_adapter` made trainable (reference: its frozen copy)."""
    if not cfg.init_adapter:
        return apply_fresh_lora(model, cfg.lora, cfg.train, placement)
    from peft import PeftModel

    with publishing.fetched_adapter(cfg.init_adapter, token=token) as folder:
        require_same_base(folder, cfg.init_adapter, cfg.model.name)
        peft_model = PeftModel.from_pretrained(model, folder, is_trainable=True)  # freezes the base itself
    return peft_model, _counted(peft_model, f"adapter {cfg.init_adapter} (its LoRA shape; lora.* options do not apply)")


def require_same_base(folder: Path, uri: str, model_name: str, key: str = "init_adapter") -> None:
    """An adapter trained on another base model would load, and train, into nonsense: refuse it."""
    recorded = folder / "ftllm.json"  # what publishing records beside every adapter
    base = json.loads(recorded.read_text()).get("base_model") if recorded.is_file() else None
    if base and base != model_name:
        raise ConfigError(
            f"{key}: {uri} was trained on {base!r}, but model.name is {model_name!r}; set model.name={base}"
        )
