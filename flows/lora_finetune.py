"""`lora-finetune`: fine-tune a causal LM with LoRA, track it in MLflow, publish it, reload and verify it.

load_dataset → load_base_model → freeze_and_apply_lora → train → evaluate → push_to_hub → reload_and_verify
    → challenge_champion

python -m flows.lora_finetune --config configs/lora_demo.yaml --set train.max_steps=50 --set lora.r=16
prefect deployment run lora-finetune/lora-finetune          (with the local stack up)
"""

from __future__ import annotations

import sys

from prefect import flow

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from flows.shared_steps import challenge_champion, publish_and_verify
from tasks.core import models, tracking
from tasks.core.cli import run_cli
from tasks.core.config import load_config
from tasks.core.steps import step
from tasks.training import challenge, checkpoints, data, lora, report, runs, sft
from tasks.training.config import DataOptions, LoraFinetuneConfig, ModelOptions
from tasks.training.evaluation import EvalReport
from tasks.training.results import LoraRun, RunSetup

FLOW = "lora-finetune"
DEFAULT_CONFIG = "configs/lora_demo.yaml"


@step(io_retries=2)
def load_dataset(options: DataOptions) -> data.SftData:
    return data.load_sft_data(options)


@step(io_retries=2)
def load_base_model(options: ModelOptions, placement: models.Placement):
    return models.load_base_model(options.name, placement, options.revision, options.trust_remote_code)


@step
def freeze_and_apply_lora(model, cfg: LoraFinetuneConfig, placement: models.Placement):
    return lora.apply_fresh_lora(model, cfg.lora, cfg.train, placement)


@step
def train(model, tokenizer, rows: list[data.Row], cfg: LoraFinetuneConfig, placement: models.Placement):
    return sft.train(model, tokenizer, rows, cfg, placement, checkpoints.checkpoint_dir(FLOW, cfg))


@step
def evaluate(model, tokenizer, rows: list[data.Row], cfg: LoraFinetuneConfig) -> EvalReport:
    return sft.evaluate(model, tokenizer, rows, cfg)


@flow(name=FLOW, log_prints=False)
def lora_finetune(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None) -> LoraRun:
    cfg = load_config(LoraFinetuneConfig, config, overrides)
    token, placement = runs.prepare(cfg)
    run = LoraRun(FLOW, RunSetup(config, overrides or [], placement))
    with runs.recorded(run, cfg, {"publish.uri": cfg.publish.uri}, report.lora_markdown) as run_id:
        sft_data = load_dataset(cfg.data)
        run.data = sft_data.summary()
        tracking.set_tags({"dataset.fingerprint": sft_data.fingerprint})
        model, tokenizer, base_path = load_base_model(cfg.model, placement)
        model, run.params = freeze_and_apply_lora(model, cfg, placement)
        tracking.log_metrics({"trainable_params": run.params.trainable})
        run.train, run.tokens = train(model, tokenizer, sft_data.train, cfg, placement)
        runs.record_training(run.train)
        run.evaluation = evaluate(model, tokenizer, sft_data.eval, cfg)
        tracking.log_metrics(run.evaluation.metrics())
        card_metrics = {**run.evaluation.metrics(), **run.train.metrics()}
        runs.finish(run, *publish_and_verify(FLOW, cfg, run_id, model, tokenizer, base_path, card_metrics, token))
        candidate, score_champion = challenge.sft_challenge(model, tokenizer, sft_data.eval, run.evaluation, cfg)
        run.champion = challenge_champion(run.publication, cfg.publish, candidate, score_champion)
    return run


def main(argv: list[str] | None = None) -> int:
    return run_cli(lora_finetune, LoraFinetuneConfig, DEFAULT_CONFIG, argv, show=report.print_lora)


if __name__ == "__main__":
    sys.exit(main())
