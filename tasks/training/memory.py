"""Gradient checkpointing by memory: measure what one training step keeps for backward, then decide.

`train.gradient_checkpointing: auto` turns checkpointing on on a GPU only when a step without it
would not fit `train.memory_budget_gb` (default: 90% of the GPU). One example goes through the model
exactly as the trainer's loss sends it (Liger's kernels applied, the attention kernel chosen, TRL's
fused LM head, which never builds full-vocabulary logits) while saved-tensor hooks count the bytes
autograd keeps; that count, scaled to a step's tokens, plus the model's own tensors and the
adapter's optimizer state, is compared with the budget.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tasks.core.models import Placement
from tasks.training.config import TrainOptions

log = logging.getLogger(__name__)

# Activation memory of a step beyond what the saved tensors hold (gradients in flight, the loss's
# upcast logits, allocator slack): a margin on the probe's count, not a measured law.
ACTIVATION_HEADROOM = 1.25


@dataclass(frozen=True)
class MemoryEstimate:
    """What one training step needs on the device without gradient checkpointing, against the budget."""

    resident_bytes: int  # the model's own tensors + gradients and AdamW moments of the trainable ones
    activation_bytes: int  # tensors saved for backward by one full step (measured on a probe row, scaled)
    budget_bytes: int

    @property
    def fits(self) -> bool:
        return self.resident_bytes + ACTIVATION_HEADROOM * self.activation_bytes <= self.budget_bytes

    def describe(self) -> str:
        gib = 1024**3
        return (
            f"{self.resident_bytes / gib:.1f} GiB resident + {ACTIVATION_HEADROOM} x "
            f"{self.activation_bytes / gib:.1f} GiB activations vs a {self.budget_bytes / gib:.1f} GiB budget"
        )


def saved_activation_bytes(model, batch: dict[str, Any]) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward pass (each storage once).

    Counted with saved-tensor hooks, so it is the same number on any device, needs no backward,
    and sees what the attention kernel, Liger's fused loss or checkpointing actually keep.
    """
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(**batch, use_cache=False)  # as in training: no KV cache, packed rows detected
    del output
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(size for pointer, size in storages.items() if pointer not in parameters)


def model_bytes(model) -> int:
    """Bytes of the model's own parameters and buffers (tied weights once)."""
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in itertools.chain(model.parameters(), model.buffers())
    }
    return sum(storages.values())


def estimate_memory(
    model, probe_batch: dict[str, Any], tokens_per_step: int, budget_gib: float | None = None
) -> MemoryEstimate:
    """Memory of a step of `tokens_per_step` tokens without checkpointing, from a probe batch's count.

    Saved activations grow linearly with tokens (flash attention and `packed_sdpa` keep no
    seq x seq matrix), so one short probe row predicts the full step. Budget: `budget_gib`, else 90%
    of the GPU. Resident: this model's tensors, not whatever else the process keeps on the device
    (a benchmark's other setups) that this step does not need.
    """
    probe_tokens = int(probe_batch["input_ids"].numel())
    was_checkpointing = getattr(model, "is_activation_checkpointing", False)
    if was_checkpointing:
        model.activation_checkpointing_disable()
    try:
        per_token = saved_activation_bytes(model, probe_batch) / probe_tokens
    finally:
        if was_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    device = probe_batch["input_ids"].device
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    resident = model_bytes(model) + 3 * trainable  # + grads + two AdamW moments
    if budget_gib is not None:
        budget = int(budget_gib * 1024**3)
    elif device.type == "cuda":
        budget = int(0.9 * torch.cuda.get_device_properties(device).total_memory)
    else:
        raise ValueError("estimate_memory: give budget_gib when the model is not on a GPU")
    return MemoryEstimate(resident, int(per_token * tokens_per_step), budget)


def use_gradient_checkpointing(
    options: TrainOptions, placement: Placement, estimate: MemoryEstimate | None = None
) -> bool:
    """on/off as asked; auto: never on the CPU (it only costs time), on a GPU only when memory needs it.

    Without an estimate (before the model is loaded, or when the probe itself ran out of memory),
    auto on a GPU says on: the safe guess.
    """
    if options.gradient_checkpointing != "auto":
        return options.gradient_checkpointing == "on"
    if placement.device != "cuda":
        return False
    return estimate is None or not estimate.fits


def sft_loss_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The model inputs of TRL's SFT loss for a collated batch: the batch, through TRL's fused LM head."""
    return {**batch, "fused_lm_head": True}


def probe_memory(
    trainer,
    placement: Placement,
    tokens_per_step: int,
    budget_gib: float | None,
    loss_inputs: Callable[[dict[str, Any]], dict[str, Any]],
) -> MemoryEstimate | None:
    """The estimate from the trainer's first example, or None when the probe itself runs out of memory."""
    device = next(trainer.model.parameters()).device
    batch = trainer.data_collator([trainer.train_dataset[0]])
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    try:
        with torch.autocast(device.type, dtype=placement.dtype, enabled=placement.precision != "fp32"):
            return estimate_memory(trainer.model, loss_inputs(batch), tokens_per_step, budget_gib)
    except torch.OutOfMemoryError:
        log.warning("the memory probe ran out of device memory: a step without checkpointing would too")
        return None
    finally:
        del batch
        if device.type == "cuda":
            torch.cuda.empty_cache()  # hand the probe's blocks back before training sizes its own


def decide_checkpointing(
    trainer,
    options: TrainOptions,
    placement: Placement,
    max_length: int,
    loss_inputs: Callable[[dict[str, Any]], dict[str, Any]] = sft_loss_inputs,
    sequences_per_example: int = 1,
) -> bool:
    """Settle `gradient_checkpointing: auto` on a GPU by measuring one example (`train.memory_budget_gb`).

    The trainer's model is probed as it will train (Liger applied, attention kernel chosen) with the
    inputs its loss builds (`loss_inputs`; a DPO pair is `sequences_per_example=2` rows). The answer
    goes into the trainer's arguments and the model, which `freeze_and_apply_lora` may have set up
    with the safe guess (on).
    """
    estimate = None
    if options.gradient_checkpointing == "auto" and placement.device == "cuda":
        tokens_per_step = options.batch_size * sequences_per_example * max_length
        estimate = probe_memory(trainer, placement, tokens_per_step, options.memory_budget_gb, loss_inputs)
    checkpointing = use_gradient_checkpointing(options, placement, estimate)
    if estimate is not None:
        log.info("gradient checkpointing %s: %s", "on" if checkpointing else "off", estimate.describe())
    # transformers 5 reads activation_checkpointing; gradient_checkpointing is its deprecated mirror.
    trainer.args.activation_checkpointing = trainer.args.gradient_checkpointing = checkpointing
    if not checkpointing and getattr(trainer.model, "is_activation_checkpointing", False):
        trainer.model.activation_checkpointing_disable()
    return checkpointing
