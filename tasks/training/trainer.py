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

from tasks.core import models
from tasks.core.config import ConfigError
from tasks.core.models import Placement
from tasks.training import checkpoints
from tasks.training.checkpoints import last_checkpoint
from tasks.training.config import TrainOptions
from tasks.training.memory import decide_checkpointing, use_gradient_checkpointing

log = logging.getLogger(__name__)


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
    """The attention kernel to train packed rows with; each keeps packed documents apart.

    flash-attention 2 (when transformers finds it usable: installed, a supported version, CUDA, half
    precision) takes the document boundaries as cu_seq_lens; everywhere else `packed_sdpa` cuts the
    packed row at them. Plain sdpa would attend over the whole flattened batch under a block-diagonal
    mask: time quadratic in the batch's tokens, and activations no longer linear in them.
    """
    from transformers.utils import is_flash_attn_2_available

    half = placement.precision in ("bf16", "fp16")
    if placement.device == "cuda" and half and is_flash_attn_2_available():
        return "flash_attention_2"
    return register_packed_sdpa()


def use_liger(options: TrainOptions, placement: Placement) -> bool:
    """Liger's RMSNorm and SwiGLU kernels (`models.apply_liger`): Triton, so CUDA only."""
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
        # Liger goes on the model instance (models.apply_liger, with the trainer): the Trainer's own
        # call would rebind it for every model of the family in the process.
        use_liger_kernel=False,
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
        **distributed_arguments(options),
    )


def distributed_arguments(options: TrainOptions) -> dict[str, Any]:
    """Under torchrun the Trainer (through accelerate) wraps the model in DDP or FSDP itself."""
    if options.launcher != "torchrun":
        return {}
    if options.strategy == "fsdp":
        # FSDP2 shards every decoder layer (the model's `_no_split_modules`); the adapter is saved
        # as one full state dict, the form PEFT reloads.
        return {"fsdp": True, "fsdp_config": {"version": 2, "state_dict_type": "FULL_STATE_DICT"}}
    return {"ddp_find_unused_parameters": False}  # every LoRA weight takes part in every step


def mlflow_log_callback():
    """Logs what the Trainer logs into the active MLflow run: `loss` as `train_loss`, the rest as named."""
    from transformers import TrainerCallback

    class MlflowLogCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            import mlflow

            # Under torchrun only rank 0 has a run (distributed_entry); the others log nothing.
            if not logs or not state.is_world_process_zero or mlflow.active_run() is None:
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
    if not resume and output_dir.exists() and trainer.is_world_process_zero():
        shutil.rmtree(output_dir)  # a fresh run must not mix with an older run's checkpoints (one rank clears)
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
    if use_liger(options, placement):
        models.apply_liger(model)
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(examples),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def train_sft(trainer, options: TrainOptions, placement: Placement, max_length: int) -> TrainResult:
    """Supervised fine-tuning with a trainer from `sft_trainer` (the same options, placement and
    max_length), checkpointing as memory needs, resuming as `train.resume` says."""
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    trainer.model.train()
    decide_checkpointing(trainer, options, placement, max_length)
    if options.checkpoint_uri:
        output_dir = Path(trainer.args.output_dir)
        if options.resume:
            checkpoints.restore_checkpoint(output_dir, options.checkpoint_uri)
        trainer.add_callback(checkpoints.mirror_callback(output_dir, options.checkpoint_uri, options.save_total_limit))
    result = run_trainer(trainer, Path(trainer.args.output_dir), options.resume)
    trainer.model.eval()
    return result
