"""The `@champion` alias of a registered model: the version to serve, moved only to one at least as good.

A new version challenges the current champion on the candidate's own held-out data: the caller
scores the champion's adapter with the same function that scored the candidate, so both numbers
come from the same rows, the same reference and the same code. The decision, and why, goes into
the run's tags (`champion.*`) and the version's tags (`eval.*`).

An alias that points at a version the registry no longer has is reported and never followed: a
fetch of it fails naming the alias, and a challenger then takes the alias over (there is nothing to
compare with), which repairs it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tasks.core import tracking
from tasks.publishing.errors import PublishError
from tasks.publishing.fetch import fetched_adapter
from tasks.publishing.target import Address
from tasks.publishing.targets.mlflow_registry import CHAMPION, SCHEME, uri_of, version_by_alias
from tasks.publishing.uris import parse_uri

log = logging.getLogger(__name__)

Promote = Literal["auto", "always", "never"]
PROMOTE_MODES: tuple[str, ...] = ("auto", "always", "never")


class NotComparable(PublishError):
    """The champion cannot be scored on the candidate's data (another base model, say); the message says why."""


@dataclass(frozen=True)
class ChampionInfo:
    name: str  # the registered model
    version: str
    uri: str  # pinned: mlflow://NAME/VERSION
    run_id: str | None  # the run that trained it


@dataclass(frozen=True)
class Score:
    """A held-out score and which way is better: SFT eval loss (lower), DPO reward accuracy (higher)."""

    metric: str
    value: float
    higher_is_better: bool

    def at_least_as_good_as(self, other: float) -> bool:
        return self.value >= other if self.higher_is_better else self.value <= other


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    reason: str
    candidate: str  # the pinned URI of the challenger
    previous: str | None  # the pinned URI of the champion it challenged; None when there was none
    metric: str
    candidate_score: float
    champion_score: float | None  # the champion's score on the candidate's data; None when not scored

    def tags(self) -> dict[str, str]:
        """What the run records: promoted or not, against whom, the two scores, and why."""
        return {
            "champion.promoted": "true" if self.promoted else "false",
            "champion.previous": self.previous or "none",
            "champion.metric": self.metric,
            "champion.candidate_score": f"{self.candidate_score:.6g}",
            "champion.previous_score": "none" if self.champion_score is None else f"{self.champion_score:.6g}",
            "champion.reason": self.reason,
        }


def current_champion(name: str) -> ChampionInfo | None:
    """The version `NAME@champion` points at; None when no alias is set (or no such model).

    Raises PublishError when the alias points at a version the registry no longer has.
    """
    version = version_by_alias(name, CHAMPION)
    if version is None:
        return None
    return ChampionInfo(name, str(version.version), uri_of(Address(name, str(version.version))), version.run_id)


def promote_if_better(
    published_uri: str,
    candidate: Score,
    score_champion: Callable[[Path], float],
    mode: Promote = "auto",
    verified: bool = True,
) -> PromotionDecision:
    """Give `published_uri` (a pinned mlflow://NAME/VERSION) the `@champion` alias if it earns it.

    `score_champion(adapter_folder)` scores the current champion's adapter exactly as `candidate`
    was scored (raising NotComparable when it cannot be). `mode`: auto (only when at least as good),
    always, never. An unverified copy (`verified=False`) takes the alias only with `always`.
    """
    if mode not in PROMOTE_MODES:
        raise PublishError(f"publish.promote={mode!r}: expected one of {', '.join(PROMOTE_MODES)}")
    target, address = parse_uri(published_uri, for_fetch=True)
    if not target.has_aliases or address.version is None:
        raise PublishError(f"{published_uri}: only a pinned {SCHEME}://NAME/VERSION can hold the {CHAMPION} alias")

    def decided(promoted: bool, reason: str, previous: str | None = None, score: float | None = None):
        return PromotionDecision(promoted, reason, published_uri, previous, candidate.metric, candidate.value, score)

    if mode == "never":
        return decided(False, "publish.promote=never")
    try:
        champion = current_champion(address.name)
    except PublishError as broken:
        log.warning("%s", broken)
        return _promote(address, decided(True, f"{broken}; the new version takes the alias over"))
    if champion is None:
        return _promote(address, decided(True, f"{address.name} had no {CHAMPION}"))
    if mode == "always":
        return _promote(address, decided(True, "publish.promote=always", champion.uri))
    if not verified:
        return decided(False, "the published copy was not verified (publish.verify=false)", champion.uri)
    try:
        with fetched_adapter(champion.uri) as folder:
            score = float(score_champion(folder))
    except NotComparable as why:
        return decided(False, f"{champion.uri} cannot be compared: {why}", champion.uri)
    if math.isnan(candidate.value) or not candidate.at_least_as_good_as(score):
        better = "higher" if candidate.higher_is_better else "lower"
        return decided(
            False,
            f"{candidate.metric} {candidate.value:.4f} is not at least as good as the {CHAMPION}'s "
            f"{score:.4f} ({better} is better)",
            champion.uri,
            score,
        )
    reason = f"{candidate.metric} {candidate.value:.4f} is at least as good as {champion.uri}'s {score:.4f}"
    return _promote(address, decided(True, reason, champion.uri, score))


def _promote(address: Address, decision: PromotionDecision) -> PromotionDecision:
    from mlflow import MlflowClient

    tracking.configure()
    client = MlflowClient()
    client.set_model_version_tag(address.name, address.version, "eval.metric", decision.metric)
    client.set_model_version_tag(address.name, address.version, "eval.score", f"{decision.candidate_score:.6g}")
    client.set_registered_model_alias(address.name, CHAMPION, address.version)
    log.info("%s is now %s@%s: %s", decision.candidate, address.name, CHAMPION, decision.reason)
    return decision
