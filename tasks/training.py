"""Training: the pieces both training flows share, and supervised fine-tuning (SFT) with TRL.

- One checkpoint folder per configuration (a hash of the options that change the result), so
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
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tasks.config import data_dir, flatten
from tasks.finetune_config import TrainOptions
from tasks.models import Placement

log = logging.getLogger(__name__)

# Options that never change what is trained: a rerun that differs only in these resumes.
RESUME_NEUTRAL = ("publish.", "eval.", "train.resume", "train.output_dir", "train.num_threads",
                  "train.logging_steps", "train.save_steps", "train.save_total_limit", "data.max_eval_rows")


def checkpoint_dir(flow: str, config: Any) -> Path:
    """`train.output_dir`, or a folder named after the config's training-relevant options."""
    if config.train.output_dir:
        return Path(config.train.output_dir).expanduser().resolve()
    relevant = {k: v for k, v in flatten(config).items() if not k.startswith(RESUME_NEUTRAL)}
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return data_dir() / "checkpoints" / flow / digest


def last_checkpoint(output_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None


def use_gradient_checkpointing(options: TrainOptions, placement: Placement) -> bool:
    if options.gradient_checkpointing == "auto":
        return placement.device == "cuda"
    return options.gradient_checkpointing == "on"


def use_liger(options: TrainOptions, placement: Placement) -> bool:
    if options.liger == "off" or placement.device != "cuda":
        return False
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        if options.liger == "on":
            raise
        return False
    return True


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
        gradient_checkpointing=use_gradient_checkpointing(options, placement),
        gradient_checkpointing_kwargs={"use_reentrant": False},
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
            renamed = {("train_loss" if k == "loss" else k): float(v) for k, v in logs.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)
                       and k not in ("epoch", "total_flos", "train_runtime", "train_loss")}
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
    return TrainResult(steps=state.global_step, resumed_from_step=resumed_from,
                       final_loss=history[-1][1] if history else None, seconds=seconds, tokens=tokens,
                       tokens_per_second=tokens / seconds if seconds > 0 and tokens else 0.0,
                       output_dir=str(output_dir), loss_history=history)


def train_sft(model, tokenizer, examples: list[dict[str, list[int]]], options: TrainOptions,
              placement: Placement, output_dir: Path, max_length: int) -> TrainResult:
    """Supervised fine-tuning of the (LoRA-wrapped) model on tokenized prompt/completion rows."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    args = SFTConfig(
        **trainer_arguments(options, placement, output_dir),
        max_length=max_length,
        packing=options.packing,
        packing_strategy="bfd",  # best-fit decreasing + padding-free: no cross-row attention
        completion_only_loss=True,
        dataset_num_proc=None,
    )
    model.train()
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(examples),
                         processing_class=tokenizer, callbacks=[mlflow_log_callback()])
    result = run_trainer(trainer, output_dir, options.resume)
    model.eval()
    return result


def remove_checkpoints(output_dir: str | Path) -> None:
    """After a run has published its adapter, its checkpoints are only disk: a rerun starts fresh."""
    shutil.rmtree(output_dir, ignore_errors=True)
