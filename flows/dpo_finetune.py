"""`dpo-finetune`: Direct Preference Optimization of a LoRA adapter, tracked, gated, published and verified.

load_preferences → load_policy → apply_lora → prepare_trainer → evaluate_untrained → train_dpo
    → evaluate_trained → quality_gate → push_to_hub → reload_and_verify

python -m flows.dpo_finetune --config configs/dpo_demo.yaml --set train.max_steps=40 --set dpo.beta=0.2
prefect deployment run dpo-finetune/dpo-finetune          (with the local stack up)
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from prefect import flow

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from flows.shared_steps import publish_and_verify
from tasks import publishing
from tasks.core import models, secrets, tracking
from tasks.core.cli import run_cli
from tasks.core.config import ConfigError, load_config
from tasks.core.reporting import failure_markdown, publish_summary, table
from tasks.core.steps import step
from tasks.publishing import publish
from tasks.training import checkpoints, dpo, lora, preferences
from tasks.training import trainer as training
from tasks.training.config import DpoFinetuneConfig

FLOW = "dpo-finetune"
DEFAULT_CONFIG = "configs/dpo_demo.yaml"


@step(io_retries=2)
def load_preferences(cfg: DpoFinetuneConfig) -> preferences.PreferenceData:
    # The model's own tokenizer measures prompts: max_prompt_tokens counts chat-template tokens.
    tokenizer = models.load_tokenizer(
        models.resolve_model_path(cfg.model.name), cfg.model.revision, cfg.model.trust_remote_code
    )
    d = cfg.data
    return preferences.load_preferences(
        train=d.train,
        eval=d.eval,
        split=d.split,
        eval_fraction=d.eval_fraction,
        max_train_rows=d.max_train_rows,
        max_eval_rows=d.max_eval_rows,
        on_bad_rows=d.on_bad_rows,
        system_prompt=d.system_prompt,
        seed=d.seed,
        tokenizer=tokenizer,
        max_prompt_tokens=cfg.dpo.max_prompt_tokens,
    )


@step(io_retries=2)
def load_policy(cfg: DpoFinetuneConfig, placement: models.Placement):
    return models.load_base_model(cfg.model.name, placement, cfg.model.revision, cfg.model.trust_remote_code)


@step(io_retries=2)
def apply_lora(model, cfg: DpoFinetuneConfig, placement: models.Placement, token: str | None):
    """A fresh adapter (reference: adapter off), or the `init_adapter` made trainable (reference: its frozen copy)."""
    if cfg.init_adapter:
        from peft import PeftModel

        with publish.fetched_adapter(cfg.init_adapter, token=token) as folder:
            recorded = folder / "ftllm.json"
            base = json.loads(recorded.read_text()).get("base_model") if recorded.is_file() else None
            if base and base != cfg.model.name:
                raise ConfigError(
                    f"init_adapter: {cfg.init_adapter} was trained on {base!r}, but model.name is "
                    f"{cfg.model.name!r}; set model.name={base}"
                )
            peft_model = PeftModel.from_pretrained(model, folder, is_trainable=True)  # freezes the base itself
        start = f"adapter {cfg.init_adapter} (its LoRA shape; lora.* options do not apply)"
    else:
        peft_model = lora.freeze_and_apply_lora(
            model,
            cfg.lora.r,
            cfg.lora.alpha,
            cfg.lora.dropout,
            cfg.lora.target_modules,
            gradient_checkpointing=training.use_gradient_checkpointing(cfg.train, placement),
        )
        start = "fresh LoRA adapter"
    trainable, total = lora.count_parameters(peft_model)
    return peft_model, {"start": start, "trainable_params": trainable, "total_params": total}


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
def train_dpo(trainer, output_dir: Path, cfg: DpoFinetuneConfig) -> training.TrainResult:
    return dpo.train_dpo(trainer, output_dir, cfg.train.resume)


@step
def quality_gate(base: dpo.Evaluation, trained: dpo.Evaluation, cfg: DpoFinetuneConfig) -> dpo.Gate:
    gate = dpo.quality_gate(
        base.metrics["rewards/accuracies"], trained.metrics["rewards/accuracies"], cfg.dpo.min_reward_accuracy
    )
    tracking.set_tags({"gate.status": "passed" if gate.passed else "failed", "gate.reason": gate.reason})
    if not gate.passed:
        raise dpo.QualityGateFailed(f"quality gate failed, nothing published: {gate.reason}")
    return gate


def hub_token(cfg: DpoFinetuneConfig) -> str | None:
    """Needed when publishing to, or starting from, the Hub."""
    uses_hub = publishing.needs_hub_token(cfg.publish.uri, cfg.init_adapter)
    return secrets.hf_token(cfg.publish.token_secret) if uses_hub else None


@flow(name=FLOW, log_prints=False)
def dpo_finetune(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None) -> dict:
    cfg = load_config(DpoFinetuneConfig, config, overrides)
    token = hub_token(cfg)
    secrets.install_redaction(*([token] if token else []))
    tracking.check_tracking_reachable()  # a down MLflow server fails the run now, not after training
    placement = models.resolve_placement(cfg.train.device, cfg.train.precision)
    story: dict = {"flow": FLOW, "config": config, "overrides": overrides or [], "placement": placement.__dict__}
    tags = {"publish.uri": cfg.publish.uri, "init_adapter": cfg.init_adapter or "none"}
    try:
        with tracking.start_run(FLOW, cfg, tags=tags) as run:
            story["mlflow"] = tracking.run_link(run)
            prefs = load_preferences(cfg)
            story["data"] = asdict(prefs.summary())
            story["bad_rows"] = [str(b) for b in prefs.bad_rows + prefs.too_long]
            tracking.set_tags({"dataset.fingerprint": prefs.fingerprint})
            tracking.log_metrics(
                {
                    "data_train_pairs": len(prefs.train),
                    "data_eval_pairs": len(prefs.eval),
                    "data_bad_rows": len(prefs.bad_rows),
                    "data_too_long": len(prefs.too_long),
                }
            )
            model, tokenizer, base_path = load_policy(cfg, placement)
            model, story["params"] = apply_lora(model, cfg, placement, token)
            tracking.log_metrics({"trainable_params": story["params"]["trainable_params"]})
            trainer, output_dir = prepare_trainer(model, tokenizer, prefs, cfg, placement)
            base = evaluate_untrained(trainer, cfg)
            tracking.log_metrics(base.prefixed("base_eval"))
            result = train_dpo(trainer, output_dir, cfg)
            story["train"] = result.summary()
            tracking.log_metrics({"train_tokens_per_second": result.tokens_per_second})
            tracking.set_tags({"train.resumed_from_step": str(result.resumed_from_step)})
            trained = evaluate_trained(trainer, cfg, base.reference)
            tracking.log_metrics(trained.prefixed("eval"), step=result.steps)
            story["eval"] = {"untrained": base.metrics, "trained": trained.metrics}
            story["gate"] = quality_gate(base, trained, cfg).__dict__
            card_metrics = {**dpo.metrics_for_card(base, trained), **result.metrics()}  # no local paths
            publish_and_verify(FLOW, cfg, run.info.run_id, model, tokenizer, base_path, card_metrics, token, story)
            checkpoints.remove_checkpoints(result.output_dir)  # published: a rerun starts fresh
    except Exception as error:
        story["error"] = f"{type(error).__name__}: {error}"
        publish_summary(FLOW, failure_markdown(story))
        raise
    publish_summary(FLOW, story_markdown(story))
    return story


def story_markdown(story: dict) -> str:
    d, p, t = story["data"], story["params"], story["train"]
    before, after = story["eval"]["untrained"], story["eval"]["trained"]

    def row(label: str, m: dict) -> list:
        return [
            label,
            f"{m['rewards/accuracies']:.3f}",
            f"{m['rewards/margins']:.4f}",
            f"{m['rewards/chosen']:.4f}",
            f"{m['rewards/rejected']:.4f}",
            f"{m['logps/chosen']:.2f}",
            f"{m['logps/rejected']:.2f}",
        ]

    steps_run = max(1, t["steps"] - t["resumed_from_step"])
    lines = [
        f"# dpo-finetune: {'verified' if story.get('verify', {}).get('passed') else 'published'}",
        f"MLflow: {story['mlflow']}  ",
        f"Placement: {story['placement']['device']} / {story['placement']['precision']}",
        "## Preference pairs",
        table(
            ["train pairs", "held-out pairs", "formats", "bad rows", "prompts too long", "prompts trimmed"],
            [[d["train_pairs"], d["eval_pairs"], d["formats"], d["bad_rows"], d["too_long"], d["trimmed_prompts"]]],
        ),
    ]
    if story["bad_rows"]:
        lines.append(
            "Reported rows:\n\n"
            + "\n".join(f"- {b}" for b in story["bad_rows"][:20])
            + (f"\n- ... and {len(story['bad_rows']) - 20} more" if len(story["bad_rows"]) > 20 else "")
        )
    lines += [
        "## Policy",
        table(
            ["start", "trainable params", "total params"],
            [[p["start"], f"{p['trainable_params']:,}", f"{p['total_params']:,}"]],
        ),
        "## Training",
        table(
            ["steps", "resumed from", "final loss", "seconds", "s/step"],
            [
                [
                    t["steps"],
                    t["resumed_from_step"],
                    "-" if t["final_loss"] is None else f"{t['final_loss']:.4f}",
                    f"{t['seconds']:.1f}",
                    f"{t['seconds'] / steps_run:.2f}",
                ]
            ],
        ),
        f"## Held-out pairs ({int(after['pairs'])}): the implicit reward, before and after",
        table(
            ["policy", "reward accuracy", "margin", "reward chosen", "reward rejected", "logp chosen", "logp rejected"],
            [row("untrained", before), row("trained", after)],
        ),
        f"Quality gate: **passed**: {story['gate']['reason']}",
        "## Published",
        f"`{story['published']['uri']}` ({story['published']['location']})",
    ]
    if "verify" in story:
        v = story["verify"]
        lines += [
            "## Verification",
            table(
                ["passed", "tensors identical", "tensors", "max |Δlogit|", "sample"],
                [[v["passed"], v["tensors_identical"], v["n_tensors"], f"{v['max_abs_logit_diff']:.2e}", v["sample"]]],
            ),
        ]
    return "\n\n".join(lines)


def show(story: dict, args) -> None:
    before, after, t = story["eval"]["untrained"], story["eval"]["trained"], story["train"]
    print(f"dpo-finetune completed: {t['steps']} steps in {t['seconds']:.0f}s")
    print(
        f"  held-out reward accuracy: untrained {before['rewards/accuracies']:.3f} -> trained "
        f"{after['rewards/accuracies']:.3f} (margin {after['rewards/margins']:.4f}, {int(after['pairs'])} pairs)"
    )
    print(f"  published: {story['published']['uri']}")
    if "verify" in story:
        print(f"  verified: {story['verify']['passed']} (max |Δlogit| {story['verify']['max_abs_logit_diff']:.2e})")
    print(f"  MLflow: {story['mlflow']}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        dpo_finetune, DpoFinetuneConfig, DEFAULT_CONFIG, argv, description=__doc__.splitlines()[0], show=show
    )


if __name__ == "__main__":
    sys.exit(main())
