"""Supervised fine-tuning on instruction rows (`lora-finetune`): tokenize, train, compare with the base."""

from __future__ import annotations

from pathlib import Path

from tasks.core.models import Placement
from tasks.training.config import LoraFinetuneConfig
from tasks.training.data import DataError, Row, TokenSummary, tokenize_rows
from tasks.training.evaluation import EvalReport, evaluate_against_base
from tasks.training.trainer import TrainResult, mlflow_log_callback, sft_trainer, train_sft


def train(
    model, tokenizer, rows: list[Row], cfg: LoraFinetuneConfig, placement: Placement, output_dir: Path
) -> tuple[TrainResult, TokenSummary]:
    _, result, tokens = train_with_trainer(model, tokenizer, rows, cfg, placement, output_dir)
    return result, tokens


def train_with_trainer(
    model, tokenizer, rows: list[Row], cfg: LoraFinetuneConfig, placement: Placement, output_dir: Path
):
    """(trainer, result, token summary): under torchrun the trainer then saves the adapter (FSDP gathers it)."""
    tokenized = tokenize_rows(rows, tokenizer, cfg.model.max_length)
    if not tokenized.examples:
        raise DataError(f"every training row is longer than model.max_length={cfg.model.max_length}")
    max_length, callbacks = cfg.model.max_length, [mlflow_log_callback()]
    trainer = sft_trainer(model, tokenizer, tokenized.examples, cfg.train, placement, output_dir, max_length, callbacks)
    result = train_sft(trainer, cfg.train, placement, max_length)
    return trainer, result, tokenized.summary()


def evaluate(model, tokenizer, rows: list[Row], cfg: LoraFinetuneConfig) -> EvalReport:
    tokenized = tokenize_rows(rows, tokenizer, cfg.model.max_length)
    return evaluate_against_base(
        model, tokenizer, tokenized.examples, cfg.eval.sample_prompts, cfg.eval.max_new_tokens, cfg.eval.batch_size
    )
