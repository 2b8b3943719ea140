"""`dpo-finetune`: Direct Preference Optimization of a LoRA adapter, tracked, gated, published and verified.

load_preferences → load_policy → apply_lora → prepare_trainer → evaluate_untrained → train_dpo
    → evaluate_trained → quality_gate → push_to_hub → reload_and_verify → challenge_champion

With `train.launcher=torchrun` one step (`train_distributed`) prepares, evaluates, trains and
evaluates again on every rank (evaluation gathered over ranks); the steps after it take the adapter
rank 0 wrote (`reload_trained_adapter`).

python -m flows.dpo_finetune --config configs/dpo_demo.yaml --set train.max_steps=40 --set dpo.beta=0.2
prefect deployment run dpo-finetune/dpo-finetune          (with the local stack up)
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from flows.shared_steps import challenge_champion, publish_and_verify
from tasks.core import models, tracking
from tasks.core.cli import run_cli
from tasks.core.config import load_config
from tasks.core.steps import step
from tasks.training import challenge, checkpoints, dpo, launcher, lora, preferences, report, runs
from tasks.training.config import DpoFinetuneConfig
from tasks.training.results import DpoRun, PreferenceEvaluation, RunSetup
from tasks.training.trainer import TrainResult

FLOW = "dpo-finetune"
DEFAULT_CONFIG = "configs/dpo_demo.yaml"


@step(io_retries=2)
def load_preferences(cfg: DpoFinetuneConfig) -> preferences.PreferenceData:
    return preferences.load_for_model(cfg.model, cfg.data, cfg.dpo.max_prompt_tokens)


@step(io_retries=2)
def load_policy(cfg: DpoFinetuneConfig, placement: models.Placement):
    return models.load_base_model(cfg.model.name, placement, cfg.model.revision, cfg.model.trust_remote_code)


@step(io_retries=2)
def apply_lora(model, cfg: DpoFinetuneConfig, placement: models.Placement, token: str | None):
    return lora.start_policy(model, cfg, placement, token)


@step
def prepare_trainer(
    model, tokenizer, prefs: preferences.PreferenceData, cfg: DpoFinetuneConfig, placement: models.Placement
):
    """TRL tokenizes the pairs (and, with precompute_ref_log_probs, scores the reference once)."""
    output_dir = checkpoints.checkpoint_dir(FLOW, cfg)
    trainer = dpo.build_trainer(model, tokenizer, prefs.train, prefs.eval, cfg, placement, output_dir)
    return trainer, output_dir


@step
def evaluate_untrained(trainer, cfg: DpoFinetuneConfig) -> dpo.Evaluation:
    return dpo.evaluate_untrained(trainer, cfg.dpo.beta)


@step
def evaluate_trained(trainer, cfg: DpoFinetuneConfig, reference: dpo.PairLogps) -> dpo.Evaluation:
    return dpo.evaluate_trained(trainer, cfg.dpo.beta, reference)


@step
def train_dpo(trainer, output_dir: Path, cfg: DpoFinetuneConfig) -> TrainResult:
    return dpo.train_dpo(trainer, output_dir, cfg.train.resume)


@step
def train_distributed(
    prefs: preferences.PreferenceData, cfg: DpoFinetuneConfig, run_id: str, token: str | None
) -> tuple[TrainResult, dpo.Evaluation, dpo.Evaluation]:
    """torchrun: every rank evaluates the untrained policy, trains, and evaluates it again."""
    result = launcher.train_distributed(FLOW, cfg, run_id, prefs.train, prefs.eval, token)
    return launcher.train_result(result), launcher.evaluation(result["base"]), launcher.evaluation(result["trained"])


reload_trained_adapter = step(launcher.reload_trained, name="reload_trained_adapter")


@step
def quality_gate(base: dpo.Evaluation, trained: dpo.Evaluation, cfg: DpoFinetuneConfig) -> dpo.Gate:
    return dpo.require_gate(base, trained, cfg.dpo.min_reward_accuracy)


@flow(name=FLOW, log_prints=False)
def dpo_finetune(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None) -> DpoRun:
    cfg = load_config(DpoFinetuneConfig, config, overrides)
    token, placement = runs.prepare(cfg, cfg.init_adapter)
    run = DpoRun(FLOW, RunSetup(config, overrides or [], placement))
    tags = {"publish.uri": cfg.publish.uri, "init_adapter": cfg.init_adapter or "none"}
    with runs.recorded(run, cfg, tags, report.dpo_markdown) as run_id:
        prefs = load_preferences(cfg)
        run.data = prefs.summary()
        tracking.set_tags({"dataset.fingerprint": prefs.fingerprint})
        tracking.log_metrics(run.data.metrics())
        model, tokenizer, base_path = load_policy(cfg, placement)
        model, run.params = apply_lora(model, cfg, placement, token)
        tracking.log_metrics({"trainable_params": run.params.trainable})
        if cfg.train.launcher == "torchrun":
            run.train, base, trained = train_distributed(prefs, cfg, run_id, token)
            model = reload_trained_adapter(model, cfg.train, run.train)
            trainer, _ = prepare_trainer(model, tokenizer, prefs, cfg, placement)  # scores a champion here
        else:
            trainer, output_dir = prepare_trainer(model, tokenizer, prefs, cfg, placement)
            base = evaluate_untrained(trainer, cfg)
            run.train = train_dpo(trainer, output_dir, cfg)
            trained = evaluate_trained(trainer, cfg, base.reference)
        tracking.log_metrics(base.prefixed("base_eval"))
        runs.record_training(run.train)
        tracking.log_metrics(trained.prefixed("eval"), step=run.train.steps)
        run.evaluation = PreferenceEvaluation(base.metrics, trained.metrics)
        run.gate = quality_gate(base, trained, cfg)
        card_metrics = {**dpo.metrics_for_card(base, trained), **run.train.metrics()}  # no local paths
        runs.finish(run, *publish_and_verify(FLOW, cfg, run_id, model, tokenizer, base_path, card_metrics, token))
        candidate, score_champion = challenge.dpo_challenge(trainer, trained, cfg)
        run.champion = challenge_champion(run.publication, cfg.publish, candidate, score_champion)
    return run


def main(argv: list[str] | None = None) -> int:
    return run_cli(dpo_finetune, DpoFinetuneConfig, DEFAULT_CONFIG, argv, show=report.print_dpo)


if __name__ == "__main__":
    sys.exit(main())
