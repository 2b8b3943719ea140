"""The end both training flows share: save the adapter, publish it, reload it from there, verify it,
and let it challenge the registry's champion.

    save adapter + model card → push_to_hub → reload_and_verify → challenge_champion

One copy of these steps serves `lora-finetune` and `dpo-finetune`, so an adapter is published and
verified the same way whichever flow trained it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks import publishing
from tasks.core import models, tracking
from tasks.core.steps import step
from tasks.training.config import PublishOptions


@step(io_retries=3, retry_delay_seconds=10)
def push_to_hub(
    adapter_dir: Path, options: PublishOptions, card: str, token: str | None, run_id: str
) -> publishing.Published:
    return publishing.publish_adapter(
        adapter_dir, options.uri, card, private=options.private, token=token, mlflow_run_id=run_id
    )


@step(io_retries=2)
def reload_and_verify(
    published_uri: str,
    model,
    tokenizer,
    base_path: str,
    probe_prompts: list[str],
    options: PublishOptions,
    token: str | None,
) -> publishing.Verification:
    with publishing.fetched_adapter(published_uri, token=token) as fetched:
        return publishing.verify_adapter(
            model, tokenizer, base_path, fetched, probe_prompts, tolerance=options.logits_tolerance
        )


def publish_and_verify(
    flow: str,
    cfg: Any,
    run_id: str,
    model,
    tokenizer,
    base_path: str,
    card_metrics: dict[str, float],
    token: str | None,
) -> tuple[publishing.Published, publishing.Verification | None]:
    """Publish the trained adapter and verify the published copy (None with publish.verify off); tags record both.

    A copy that differs from the trained adapter does not raise here: the caller records it first.
    """
    hub_base = models.hub_id_of(cfg.model.name, cfg.model.hub_id)
    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir = publishing.save_adapter(
            model,
            tokenizer,
            Path(tmp) / "adapter",
            base_model=cfg.model.name,
            base_model_hub_id=hub_base,
            flow=flow,
            run_id=run_id,
        )
        card = publishing.model_card(
            base_model_hub_id=hub_base,
            dataset=cfg.data.train,
            config=tracking.params_of(cfg),
            metrics=card_metrics,
            mlflow_run_id=run_id,
            flow=flow,
        )
        published = push_to_hub(adapter_dir, cfg.publish, card, token, run_id)
        tracking.set_tags({"publish.uri": published.uri})
        if not publishing.publish_logs_adapter(cfg.publish.uri):  # else it would be logged twice
            tracking.log_artifacts(adapter_dir, "adapter")
    if not cfg.publish.verify:
        return published, None
    verification = reload_and_verify(
        published.uri, model, tokenizer, base_path, cfg.eval.sample_prompts, cfg.publish, token
    )
    tracking.set_tags({"verify.status": "passed" if verification.passed else "failed"})
    tracking.log_metrics({"verify_max_abs_logit_diff": verification.max_abs_logit_diff})
    return published, verification


@step(io_retries=2)
def challenge_champion(
    publication, options: PublishOptions, candidate: publishing.Score, score_champion: Callable[[Path], float]
) -> publishing.PromotionDecision | None:
    """The verified version takes the registry's @champion alias if it earns it (None: the target has no aliases).

    `publication` is the run's (the published URI and its verification); the decision and its two
    scores go into the run's `champion.*` tags.
    """
    if not publishing.has_aliases(publication.published.uri):
        return None
    decision = publishing.promote_if_better(
        publication.published.uri, candidate, score_champion, options.promote, verified=publication.verified
    )
    tracking.set_tags(decision.tags())
    return decision
