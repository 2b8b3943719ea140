"""What both training flows do around their steps: check the services, track the run, tell how it ended."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from tasks import publishing
from tasks.core import models, secrets, tracking
from tasks.core.reporting import failure_markdown, publish_summary
from tasks.training import checkpoints, launcher
from tasks.training.config import DpoFinetuneConfig, LoraFinetuneConfig
from tasks.training.results import DpoRun, LoraRun, Publication
from tasks.training.trainer import TrainResult

Run = TypeVar("Run", LoraRun, DpoRun)
Config = LoraFinetuneConfig | DpoFinetuneConfig


def prepare(cfg: Config, *adapter_uris: str | None) -> tuple[str | None, models.Placement]:
    """(Hub token, placement) before any work: the token only when publishing to, or starting from, the Hub.

    The token is redacted from every log from here on, and a down MLflow server fails the run
    before any work, not after training.
    """
    uses_hub = publishing.needs_hub_token(cfg.publish.uri, *adapter_uris)
    token = secrets.hf_token(cfg.publish.token_secret) if uses_hub else None
    secrets.install_redaction(*([token] if token else []))
    tracking.check_tracking_reachable()
    placement = models.resolve_placement(cfg.train.device, cfg.train.precision)
    launcher.check_devices(cfg.train, placement)
    return token, placement


@contextlib.contextmanager
def recorded(run: Run, cfg: Config, tags: dict[str, str], summary: Callable[[Run], str]) -> Iterator[str]:
    """The run tracked in MLflow (yields its id); its summary artifact tells how it went, or how far it got."""
    try:
        with tracking.start_run(run.flow, cfg, tags=tags) as mlflow_run:
            run.setup.mlflow = tracking.run_link(mlflow_run)
            yield mlflow_run.info.run_id
    except Exception as error:
        run.error = f"{type(error).__name__}: {error}"
        publish_summary(run.flow, failure_markdown(run))
        raise
    publish_summary(run.flow, summary(run))


def record_training(result: TrainResult) -> None:
    tracking.log_metrics({"train_tokens_per_second": result.tokens_per_second})
    tracking.set_tags({"train.resumed_from_step": str(result.resumed_from_step)})


def finish(run: Run, published: publishing.Published, verification: publishing.Verification | None) -> None:
    """Record what was published; a copy that differs from the trained adapter fails the run.

    A verified (or unverified by config) publish ends the run: its checkpoints go, so a rerun starts fresh.
    """
    run.publication = Publication(published, verification)
    if verification is not None and not verification.passed:
        raise publishing.VerificationError(verification.reason)
    checkpoints.remove_checkpoints(run.train.output_dir)
