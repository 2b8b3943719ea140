"""What a training run produced, part by part: the flows return these and the reports render them.

Each part stays None until the run gets there, so a failed run's record says how far it got.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.core.models import Placement
from tasks.publishing import PromotionDecision, Published, Verification
from tasks.training.data import SftSummary, TokenSummary
from tasks.training.dpo import Gate
from tasks.training.evaluation import EvalReport
from tasks.training.lora import ParamCounts
from tasks.training.preferences import PreferenceSummary
from tasks.training.trainer import TrainResult


@dataclass
class RunSetup:
    """How the run was started, where it trained, and where MLflow tracks it."""

    config: str
    overrides: list[str]
    placement: Placement
    mlflow: str = ""  # the MLflow run's link, once it started


@dataclass(frozen=True)
class Publication:
    published: Published
    verification: Verification | None  # None with publish.verify off

    @property
    def verified(self) -> bool:
        return self.verification is not None and self.verification.passed


@dataclass
class LoraRun:
    """`lora-finetune`: the data, the adapter's size, training, held-out evaluation, the published adapter."""

    flow: str
    setup: RunSetup
    data: SftSummary | None = None
    params: ParamCounts | None = None
    tokens: TokenSummary | None = None
    train: TrainResult | None = None
    evaluation: EvalReport | None = None
    publication: Publication | None = None
    champion: PromotionDecision | None = None  # None: not reached, or the target has no aliases
    error: str | None = None


@dataclass(frozen=True)
class PreferenceEvaluation:
    """The held-out pairs scored before and after training, under TRL's metric names (`rewards/accuracies`, ...)."""

    untrained: dict[str, float]
    trained: dict[str, float]


@dataclass
class DpoRun:
    """`dpo-finetune`: the pairs, the policy, training, the implicit reward before and after, the gate, the adapter."""

    flow: str
    setup: RunSetup
    data: PreferenceSummary | None = None
    params: ParamCounts | None = None
    train: TrainResult | None = None
    evaluation: PreferenceEvaluation | None = None
    gate: Gate | None = None
    publication: Publication | None = None
    champion: PromotionDecision | None = None  # None: not reached, or the target has no aliases
    error: str | None = None
