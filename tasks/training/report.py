"""A finished training run, told twice: the Prefect summary artifact (markdown) and what the command line prints."""

from __future__ import annotations

from tasks.core.reporting import table
from tasks.publishing import PromotionDecision
from tasks.training.results import DpoRun, LoraRun, Publication, RunSetup

REPORTED_ROWS_SHOWN = 20


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _header(flow: str, setup: RunSetup, publication: Publication) -> list[str]:
    return [
        f"# {flow}: {'verified' if publication.verified else 'published'}",
        f"MLflow: {setup.mlflow}  ",
        f"Placement: {setup.placement.device} / {setup.placement.precision}",
    ]


def _champion(decision: PromotionDecision | None) -> str | None:
    if decision is None:
        return None
    return f"{'took' if decision.promoted else 'did not take'} @champion: {decision.reason}"


def _published(publication: Publication, champion: PromotionDecision | None = None) -> list[str]:
    lines = ["## Published", f"`{publication.published.uri}` ({publication.published.location})"]
    if line := _champion(champion):
        lines.append(f"Champion: {line}")
    if v := publication.verification:
        lines += [
            "## Verification",
            table(
                ["passed", "tensors identical", "tensors", "max |Δlogit|", "sample"],
                [[v.passed, v.tensors_identical, v.n_tensors, f"{v.max_abs_logit_diff:.2e}", v.sample]],
            ),
        ]
    return lines


def _published_lines(publication: Publication, setup: RunSetup, champion: PromotionDecision | None = None) -> list[str]:
    lines = [f"  published: {publication.published.uri}"]
    if v := publication.verification:
        lines.append(f"  verified: {v.passed} (max |Δlogit| {v.max_abs_logit_diff:.2e})")
    if line := _champion(champion):
        lines.append(f"  {line}")
    return lines + [f"  MLflow: {setup.mlflow}"]


# --- lora-finetune ----------------------------------------------------------------------------


def lora_markdown(run: LoraRun) -> str:
    d, p, tokens, t, e = run.data, run.params, run.tokens, run.train, run.evaluation
    lines = _header(run.flow, run.setup, run.publication) + [
        "## Data",
        table(
            ["train rows", "eval rows", "format", "bad rows", "train tokens", "truncated", "dropped"],
            [[d.train_rows, d.eval_rows, d.format, d.bad_rows, tokens.tokens, tokens.truncated, tokens.dropped]],
        ),
        "## Model",
        table(
            ["trainable params", "total params", "share"],
            [[f"{p.trainable:,}", f"{p.total:,}", f"{p.trainable / p.total:.2%}"]],
        ),
        "## Training",
        table(
            ["steps", "resumed from", "final train loss", "seconds", "tokens/s"],
            [[t.steps, t.resumed_from_step, _loss(t.final_loss), f"{t.seconds:.1f}", f"{t.tokens_per_second:.0f}"]],
        ),
        "## Held-out evaluation",
        table(
            ["", "loss", "perplexity"],
            [
                ["base", f"{e.base_eval_loss:.4f}", f"{e.base_eval_perplexity:.2f}"],
                ["adapter", f"{e.eval_loss:.4f}", f"{e.eval_perplexity:.2f}"],
            ],
        ),
        "## Samples",
        table(["prompt", "base", "adapter"], [[s["prompt"], s["base"], s["adapter"]] for s in e.samples]),
    ]
    return "\n\n".join(lines + _published(run.publication, run.champion))


def lora_terminal(run: LoraRun) -> str:
    t, e = run.train, run.evaluation
    return "\n".join(
        [
            f"{run.flow} completed: {t.steps} steps in {t.seconds:.0f}s, {t.tokens_per_second:.0f} tokens/s",
            f"  held-out loss: base {e.base_eval_loss:.4f} -> adapter {e.eval_loss:.4f} "
            f"(perplexity {e.base_eval_perplexity:.2f} -> {e.eval_perplexity:.2f})",
            *_published_lines(run.publication, run.setup, run.champion),
        ]
    )


# --- dpo-finetune -----------------------------------------------------------------------------


def _reward_row(label: str, m: dict[str, float]) -> list[str]:
    return [
        label,
        f"{m['rewards/accuracies']:.3f}",
        f"{m['rewards/margins']:.4f}",
        f"{m['rewards/chosen']:.4f}",
        f"{m['rewards/rejected']:.4f}",
        f"{m['logps/chosen']:.2f}",
        f"{m['logps/rejected']:.2f}",
    ]


def _reported_rows(reported: list[str]) -> list[str]:
    if not reported:
        return []
    more = len(reported) - REPORTED_ROWS_SHOWN
    listing = "\n".join(f"- {row}" for row in reported[:REPORTED_ROWS_SHOWN])
    return ["Reported rows:\n\n" + listing + (f"\n- ... and {more} more" if more > 0 else "")]


def dpo_markdown(run: DpoRun) -> str:
    d, p, t = run.data, run.params, run.train
    before, after = run.evaluation.untrained, run.evaluation.trained
    steps_run = max(1, t.steps - t.resumed_from_step)
    lines = _header(run.flow, run.setup, run.publication) + [
        "## Preference pairs",
        table(
            ["train pairs", "held-out pairs", "formats", "bad rows", "prompts too long", "prompts trimmed"],
            [[d.train_pairs, d.eval_pairs, d.formats, d.bad_rows, d.too_long, d.trimmed_prompts]],
        ),
        *_reported_rows(d.reported),
        "## Policy",
        table(["start", "trainable params", "total params"], [[p.start, f"{p.trainable:,}", f"{p.total:,}"]]),
        "## Training",
        table(
            ["steps", "resumed from", "final loss", "seconds", "s/step"],
            [[t.steps, t.resumed_from_step, _loss(t.final_loss), f"{t.seconds:.1f}", f"{t.seconds / steps_run:.2f}"]],
        ),
        f"## Held-out pairs ({int(after['pairs'])}): the implicit reward, before and after",
        table(
            ["policy", "reward accuracy", "margin", "reward chosen", "reward rejected", "logp chosen", "logp rejected"],
            [_reward_row("untrained", before), _reward_row("trained", after)],
        ),
        f"Quality gate: **passed**: {run.gate.reason}",
    ]
    return "\n\n".join(lines + _published(run.publication, run.champion))


def dpo_terminal(run: DpoRun) -> str:
    before, after, t = run.evaluation.untrained, run.evaluation.trained, run.train
    return "\n".join(
        [
            f"{run.flow} completed: {t.steps} steps in {t.seconds:.0f}s",
            f"  held-out reward accuracy: untrained {before['rewards/accuracies']:.3f} -> trained "
            f"{after['rewards/accuracies']:.3f} (margin {after['rewards/margins']:.4f}, {int(after['pairs'])} pairs)",
            *_published_lines(run.publication, run.setup, run.champion),
        ]
    )


def print_lora(run: LoraRun, _args: object = None) -> None:
    print(lora_terminal(run))


def print_dpo(run: DpoRun, _args: object = None) -> None:
    print(dpo_terminal(run))
