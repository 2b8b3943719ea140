"""Training: the pieces both training flows share, and supervised fine-tuning (SFT) with TRL.

- One checkpoint folder per configuration (`tasks.training.checkpoints`), so
  rerunning a crashed run with the same config resumes from its last checkpoint: optimizer,
  scheduler, RNG and data position included (the Trainer restores them all).
- Precision and gradient checkpointing are decided per device: fp32 and no checkpointing on the
  CPU (TRL's bf16 default is slow there and makes the reloaded adapter disagree; checkpointing
  only costs time), bf16 on GPUs that have it.
- The fast path is the default: rows are packed into full sequences with position ids that reset
  per row, so no row attends to another and no compute is spent on padding.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tasks.core.config import ConfigError
from tasks.core.models import Placement
from tasks.training.checkpoints import last_checkpoint
from tasks.training.config import TrainOptions

log = logging.getLogger(__name__)

# Activation memory of a step beyond what the saved tensors hold (gradients in flight, the loss's
# upcast logits, allocator slack): a margin on the probe's count, not a measured law.
ACTIVATION_HEADROOM = 1.25


@dataclass(frozen=True)
class MemoryEstimate:
    """What one training step needs on the device without gradient checkpointing, against the budget."""

    resident_bytes: int  # weights already on the device + gradients and AdamW moments of the trainable ones
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


def estimate_memory(
    model, probe_batch: dict[str, Any], tokens_per_step: int, budget_gib: float | None = None
) -> MemoryEstimate:
    """Memory of a step of `tokens_per_step` tokens without checkpointing, from a probe batch's count.

    Saved activations grow linearly with tokens (flash/sdpa attention keeps no seq x seq matrix),
    so one short probe row predicts the full step. Budget: `budget_gib`, else 90% of the GPU.
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
    if device.type == "cuda":
        resident = torch.cuda.memory_allocated(device) + 3 * trainable  # + grads + two AdamW moments
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        resident = sum(p.numel() * p.element_size() for p in model.parameters()) + 3 * trainable
        total = None
    if budget_gib is not None:
        budget = int(budget_gib * 1024**3)
    elif total is not None:
        budget = int(0.9 * total)
    else:
        raise ValueError("estimate_memory: give budget_gib when the model is not on a GPU")
    return MemoryEstimate(resident, int(per_token * tokens_per_step), budget)


def use_gradient_checkpointing(
    options: TrainOptions, placement: Placement, estimate: MemoryEstimate | None = None
) -> bool:
    """on/off as asked; auto: never on the CPU (it only costs time), on a GPU only when memory needs it.

    Without an estimate yet (before the model is loaded), auto on a GPU says on: the safe guess.
    """
    if options.gradient_checkpointing != "auto":
        return options.gradient_checkpointing == "on"
    if placement.device != "cuda":
        return False
    return estimate is None or not estimate.fits


PACKED_SDPA = "packed_sdpa"


def packed_sdpa_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs
):
    """sdpa one document at a time when the batch is TRL's padding-free row; plain sdpa otherwise.

    A padding-free batch is a single row of many documents. Plain sdpa attends over the whole row
    under a block-diagonal mask, so it pays for the row's length squared; cutting the row at the
    document boundaries the collator passes (`cu_seq_lens_q`) pays for the sum of the documents'
    squares.
    Padded batches and generation (a KV cache, no boundaries) take plain sdpa.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    bounds = bounds.tolist()
    gqa = query.shape[1] != key.shape[1]
    pieces = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=gqa,
        )
        for start, end in itertools.pairwise(bounds)
        if end > start
    ]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def register_packed_sdpa() -> str:
    """Make `packed_sdpa` an attention implementation transformers models accept (masks as for sdpa)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)
    return PACKED_SDPA


def attention_implementation(placement: Placement) -> str:
    """The attention kernel to train with; each keeps packed documents apart.

    flash-attention 2 (when installed, in half precision on CUDA) takes the document boundaries as
    cu_seq_lens; on the CPU `packed_sdpa` cuts the packed row at them; otherwise sdpa gets the
    block-diagonal mask transformers builds from the position ids.
    """
    half = placement.precision in ("bf16", "fp16")
    if placement.device == "cuda" and half and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    if placement.device == "cpu":
        return register_packed_sdpa()
    return "sdpa"


def use_liger(options: TrainOptions, placement: Placement) -> bool:
    """Liger's fused kernels (RMSNorm, SwiGLU, RoPE, linear + cross-entropy): Triton, so CUDA only."""
    if options.liger == "off" or placement.device != "cuda":
        return False
    installed = importlib.util.find_spec("liger_kernel") is not None
    if options.liger == "on" and not installed:
        raise ConfigError(
            "train.liger: on, but the package liger-kernel is not installed "
            "(pip install liger-kernel, or train.liger=auto)"
        )
    return installed


def trainer_arguments(options: TrainOptions, placement: Placement, output_dir: Path) -> dict[str, Any]:
    """The TrainingArguments both SFT and DPO take from our TrainOptions."""
    return dict(
        output_dir=str(output_dir),
        max_steps=options.max_steps,
        learning_rate=options.learning_rate,
        lr_scheduler_type=options.lr_scheduler,
        warmup_steps=math.ceil(options.warmup_ratio * options.max_steps),
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        weight_decay=options.weight_decay,
        max_grad_norm=options.max_grad_norm,
        bf16=placement.precision == "bf16",
        fp16=placement.precision == "fp16",
        use_cpu=placement.device == "cpu",
        activation_checkpointing=use_gradient_checkpointing(options, placement),  # = gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False},
        use_liger_kernel=use_liger(options, placement),
        torch_compile=options.torch_compile,
        logging_steps=options.logging_steps,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=options.save_total_limit,
        seed=options.seed,
        data_seed=options.seed,
        report_to="none",  # MLflow logging is ours (MlflowLogCallback): one module, our metric names
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def mlflow_log_callback():
    """Logs what the Trainer logs into the active MLflow run: `loss` as `train_loss`, the rest as named."""
    from transformers import TrainerCallback

    class MlflowLogCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            import mlflow

            if not logs or mlflow.active_run() is None:
                return
            renamed = {
                ("train_loss" if k == "loss" else k): float(v)
                for k, v in logs.items()
                if isinstance(v, (int, float))
                and not isinstance(v, bool)
                and k not in ("epoch", "total_flos", "train_runtime", "train_loss")
            }
            mlflow.log_metrics(renamed, step=state.global_step)

    return MlflowLogCallback()


@dataclass
class TrainResult:
    steps: int
    resumed_from_step: int  # 0 for a fresh run
    final_loss: float | None
    seconds: float
    tokens: int  # real (non-pad) tokens processed in this process
    tokens_per_second: float
    output_dir: str
    loss_history: list[tuple[int, float]]

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "loss_history"}

    def metrics(self) -> dict[str, float]:
        """The numbers worth publishing (a model card never gets the local checkpoint path)."""
        return {
            "train_steps": self.steps,
            "train_final_loss": self.final_loss,
            "train_seconds": self.seconds,
            "train_tokens_per_second": self.tokens_per_second,
        }


def run_trainer(trainer, output_dir: Path, resume: bool) -> TrainResult:
    """Train (resuming from the last checkpoint when asked and present) and measure it."""
    checkpoint = last_checkpoint(output_dir) if resume else None
    if not resume and output_dir.exists():
        shutil.rmtree(output_dir)  # a fresh run must not mix with an older run's checkpoints
    resumed_from = int(Path(checkpoint).name.split("-")[-1]) if checkpoint else 0
    tokens_before = 0
    if checkpoint:
        log.info("resuming from %s", checkpoint)
        # Read now: save_total_limit may rotate this checkpoint away while training goes on.
        saved = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        tokens_before = int(saved.get("num_input_tokens_seen", 0))
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    state = trainer.state
    tokens = int(state.num_input_tokens_seen) - tokens_before
    history = [(entry["step"], entry["loss"]) for entry in state.log_history if "loss" in entry]
    return TrainResult(
        steps=state.global_step,
        resumed_from_step=resumed_from,
        final_loss=history[-1][1] if history else None,
        seconds=seconds,
        tokens=tokens,
        tokens_per_second=tokens / seconds if seconds > 0 and tokens else 0.0,
        output_dir=str(output_dir),
        loss_history=history,
    )


def sft_trainer(
    model,
    tokenizer,
    examples: list[dict[str, list[int]]],
    options: TrainOptions,
    placement: Placement,
    output_dir: Path,
    max_length: int,
    callbacks: list | None = None,
):
    """TRL's SFTTrainer as every SFT run (and the speed benchmark) builds it from TrainOptions."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **trainer_arguments(options, placement, output_dir),
        max_length=max_length,
        packing=options.packing,
        packing_strategy="bfd",  # best-fit decreasing + padding-free: no cross-row attention
        completion_only_loss=True,
        dataset_num_proc=None,
    )
    if options.packing:  # the kernel that keeps packed documents apart at the least cost on this device
        model.set_attn_implementation(attention_implementation(placement))
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(examples),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def decide_checkpointing(trainer, options: TrainOptions, placement: Placement, max_length: int) -> bool:
    """Settle `gradient_checkpointing: auto` on a GPU by measuring a packed row (`train.memory_budget_gb`).

    The trainer's model is probed as it will train (Liger patched, attention kernel chosen); the
    answer goes into the trainer's arguments and the model, which `freeze_and_apply_lora` may have
    set up with the safe guess (on).
    """
    estimate = None
    if options.gradient_checkpointing == "auto" and placement.device == "cuda":
        probe = trainer.data_collator([trainer.train_dataset[0]])
        probe = {k: v.to(placement.device) if isinstance(v, torch.Tensor) else v for k, v in probe.items()}
        tokens_per_step = options.batch_size * max_length
        with torch.autocast("cuda", dtype=placement.dtype, enabled=placement.precision != "fp32"):
            estimate = estimate_memory(trainer.model, probe, tokens_per_step, options.memory_budget_gb)
    checkpointing = use_gradient_checkpointing(options, placement, estimate)
    if estimate is not None:
        log.info("gradient checkpointing %s: %s", "on" if checkpointing else "off", estimate.describe())
    # transformers 5 reads activation_checkpointing; gradient_checkpointing is its deprecated mirror.
    trainer.args.activation_checkpointing = trainer.args.gradient_checkpointing = checkpointing
    if not checkpointing and getattr(trainer.model, "is_activation_checkpointing", False):
        trainer.model.activation_checkpointing_disable()
    return checkpointing


def train_sft(
    model,
    tokenizer,
    examples: list[dict[str, list[int]]],
    options: TrainOptions,
    placement: Placement,
    output_dir: Path,
    max_length: int,
) -> TrainResult:
    """Supervised fine-tuning of the (LoRA-wrapped) model on tokenized prompt/completion rows."""
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    model.train()
    trainer = sft_trainer(
        model, tokenizer, examples, options, placement, output_dir, max_length, callbacks=[mlflow_log_callback()]
    )
    decide_checkpointing(trainer, options, placement, max_length)
    result = run_trainer(trainer, output_dir, options.resume)
    model.eval()
    return result
