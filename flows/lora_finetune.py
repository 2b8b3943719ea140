"""`lora-finetune`: fine-tune a causal LM with LoRA, track it in MLflow, publish it, reload and verify it.

load_dataset → load_base_model → freeze_and_apply_lora → train → evaluate → push_to_hub → reload_and_verify

python -m flows.lora_finetune --config configs/lora_demo.yaml --set train.max_steps=50 --set lora.r=16
prefect deployment run lora-finetune/lora-finetune          (with the local stack up)
"""

from __future__ import annotations

import sys
from dataclasses import asdict

from prefect import flow

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from flows.shared_steps import publish_and_verify
from tasks import publishing
from tasks.core import models, secrets, tracking
from tasks.core.cli import run_cli
from tasks.core.config import load_config
from tasks.core.reporting import failure_markdown, publish_summary
from tasks.core.steps import step
from tasks.training import checkpoints, data, evaluation, lora
from tasks.training import trainer as training
from tasks.training.config import DataOptions, LoraFinetuneConfig, ModelOptions

FLOW = "lora-finetune"
DEFAULT_CONFIG = "configs/lora_demo.yaml"


@step(io_retries=2)
def load_dataset(options: DataOptions) -> data.SftData:
    return data.load_sft_data(
        train=options.train,
        eval=options.eval,
        format=options.format,
        split=options.split,
        eval_fraction=options.eval_fraction,
        max_train_rows=options.max_train_rows,
        max_eval_rows=options.max_eval_rows,
        on_bad_rows=options.on_bad_rows,
        system_prompt=options.system_prompt,
        seed=options.seed,
    )


@step(io_retries=2)
def load_base_model(options: ModelOptions, placement: models.Placement):
    return models.load_base_model(options.name, placement, options.revision, options.trust_remote_code)


@step
def freeze_and_apply_lora(model, cfg: LoraFinetuneConfig, placement: models.Placement):
    peft_model = lora.freeze_and_apply_lora(
        model,
        cfg.lora.r,
        cfg.lora.alpha,
        cfg.lora.dropout,
        cfg.lora.target_modules,
        gradient_checkpointing=training.use_gradient_checkpointing(cfg.train, placement),
    )
    trainable, total = lora.count_parameters(peft_model)
    return peft_model, {"trainable_params": trainable, "total_params": total}


@step
def train(model, tokenizer, rows: list[data.Row], cfg: LoraFinetuneConfig, placement: models.Placement):
    tokenized = data.tokenize_rows(rows, tokenizer, cfg.model.max_length)
    if not tokenized.examples:
        raise data.DataError(f"every training row is longer than model.max_length={cfg.model.max_length}")
    output_dir = checkpoints.checkpoint_dir(FLOW, cfg)
    result = training.train_sft(
        model, tokenizer, tokenized.examples, cfg.train, placement, output_dir, cfg.model.max_length
    )
    return result, asdict(tokenized.summary())


@step
def evaluate(model, tokenizer, rows: list[data.Row], cfg: LoraFinetuneConfig) -> evaluation.EvalReport:
    tokenized = data.tokenize_rows(rows, tokenizer, cfg.model.max_length)
    return evaluation.evaluate_against_base(
        model, tokenizer, tokenized.examples, cfg.eval.sample_prompts, cfg.eval.max_new_tokens, cfg.eval.batch_size
    )


@flow(name=FLOW, log_prints=False)
def lora_finetune(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None) -> dict:
    cfg = load_config(LoraFinetuneConfig, config, overrides)
    token = secrets.hf_token(cfg.publish.token_secret) if publishing.needs_hub_token(cfg.publish.uri) else None
    secrets.install_redaction(*([token] if token else []))
    tracking.check_tracking_reachable()  # a down MLflow server fails the run now, not after training
    placement = models.resolve_placement(cfg.train.device, cfg.train.precision)
    story: dict = {"flow": FLOW, "config": config, "overrides": overrides or [], "placement": placement.__dict__}
    try:
        with tracking.start_run(FLOW, cfg, tags={"publish.uri": cfg.publish.uri}) as run:
            story["mlflow"] = tracking.run_link(run)
            sft = load_dataset(cfg.data)
            story["data"] = asdict(sft.summary())
            tracking.set_tags({"dataset.fingerprint": sft.fingerprint})
            model, tokenizer, base_path = load_base_model(cfg.model, placement)
            model, story["params"] = freeze_and_apply_lora(model, cfg, placement)
            tracking.log_metrics({"trainable_params": story["params"]["trainable_params"]})
            result, story["tokens"] = train(model, tokenizer, sft.train, cfg, placement)
            story["train"] = result.summary()
            tracking.log_metrics({"train_tokens_per_second": result.tokens_per_second})
            tracking.set_tags({"train.resumed_from_step": str(result.resumed_from_step)})
            report = evaluate(model, tokenizer, sft.eval, cfg)
            story["eval"], story["samples"] = report.metrics(), report.samples
            tracking.log_metrics(report.metrics())
            publish_and_verify(
                FLOW,
                cfg,
                run.info.run_id,
                model,
                tokenizer,
                base_path,
                card_metrics={**report.metrics(), **result.metrics()},
                token=token,
                story=story,
            )
            checkpoints.remove_checkpoints(result.output_dir)  # published: a rerun starts fresh
    except Exception as error:
        story["error"] = f"{type(error).__name__}: {error}"
        publish_summary(FLOW, failure_markdown(story))
        raise
    publish_summary(FLOW, lora_story_markdown(story))
    return story


def lora_story_markdown(story: dict) -> str:
    from tasks.core.reporting import table

    e, t, d = story["eval"], story["train"], story["data"]
    lines = [
        f"# lora-finetune: {'verified' if story.get('verify', {}).get('passed') else 'published'}",
        f"MLflow: {story['mlflow']}  ",
        f"Placement: {story['placement']['device']} / {story['placement']['precision']}",
        "## Data",
        table(
            ["train rows", "eval rows", "format", "bad rows", "train tokens", "truncated", "dropped"],
            [
                [
                    d["train_rows"],
                    d["eval_rows"],
                    d["format"],
                    d["bad_rows"],
                    story["tokens"]["tokens"],
                    story["tokens"]["truncated"],
                    story["tokens"]["dropped"],
                ]
            ],
        ),
        "## Model",
        table(
            ["trainable params", "total params", "share"],
            [
                [
                    f"{story['params']['trainable_params']:,}",
                    f"{story['params']['total_params']:,}",
                    f"{story['params']['trainable_params'] / story['params']['total_params']:.2%}",
                ]
            ],
        ),
        "## Training",
        table(
            ["steps", "resumed from", "final train loss", "seconds", "tokens/s"],
            [
                [
                    t["steps"],
                    t["resumed_from_step"],
                    _fmt(t["final_loss"]),
                    f"{t['seconds']:.1f}",
                    f"{t['tokens_per_second']:.0f}",
                ]
            ],
        ),
        "## Held-out evaluation",
        table(
            ["", "loss", "perplexity"],
            [
                ["base", f"{e['base_eval_loss']:.4f}", f"{e['base_eval_perplexity']:.2f}"],
                ["adapter", f"{e['eval_loss']:.4f}", f"{e['eval_perplexity']:.2f}"],
            ],
        ),
        "## Samples",
        table(["prompt", "base", "adapter"], [[s["prompt"], s["base"], s["adapter"]] for s in story["samples"]]),
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


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def show(story: dict, args) -> None:
    e, t = story["eval"], story["train"]
    print(f"lora-finetune completed: {t['steps']} steps in {t['seconds']:.0f}s, {t['tokens_per_second']:.0f} tokens/s")
    print(
        f"  held-out loss: base {e['base_eval_loss']:.4f} -> adapter {e['eval_loss']:.4f} "
        f"(perplexity {e['base_eval_perplexity']:.2f} -> {e['eval_perplexity']:.2f})"
    )
    print(f"  published: {story['published']['uri']}")
    if "verify" in story:
        print(f"  verified: {story['verify']['passed']} (max |Δlogit| {story['verify']['max_abs_logit_diff']:.2e})")
    print(f"  MLflow: {story['mlflow']}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        lora_finetune, LoraFinetuneConfig, DEFAULT_CONFIG, argv, description=__doc__.splitlines()[0], show=show
    )


if __name__ == "__main__":
    sys.exit(main())
