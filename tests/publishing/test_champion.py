"""The `@champion` alias in the embedded MLflow registry: who takes it, who never does, and a broken alias.

Three real adapters of the tiny model, scored by their real held-out loss on one text: untouched
(lora_B = 0, the base's loss), one optimizer step on the text, and five. Every decision compares
the candidate with the champion's adapter as fetched back from the registry.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tasks import publishing
from tasks.core import tracking
from tasks.core.config import ConfigError, load_config
from tasks.publishing import PublishError, Score
from tasks.training.config import LoraFinetuneConfig

pytestmark = pytest.mark.timeout(180)

HELD_OUT = "The quick brown fox jumps over the lazy dog."
CARD = "---\nbase_model: test-org/tiny-base\n---\n# tiny\n"


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """{"worst", "mid", "best"}: adapter folders after 0, 1 and 5 steps on HELD_OUT."""
    import torch

    from tasks.core.models import load_base_model, resolve_placement
    from tasks.training import freeze_and_apply_lora

    folders = {}
    for label, steps in (("worst", 0), ("mid", 1), ("best", 5)):
        torch.manual_seed(0)
        model, tokenizer, base_path = load_base_model(str(tiny_model_dir), resolve_placement("cpu", "fp32"))
        model = freeze_and_apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["all-linear"])
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        ids = tokenizer(HELD_OUT, return_tensors="pt").input_ids
        for _ in range(steps):
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        folder = tmp_path_factory.mktemp("adapters") / label
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "ftllm.json").write_text(json.dumps({"base_model": base_path, "flow": "lora-finetune"}))
        folders[label] = folder
    return folders


@pytest.fixture(scope="module")
def held_out_loss(tiny_model_dir):
    """The scorer the flows hand to promote_if_better: an adapter folder's loss on HELD_OUT (lower is better)."""
    import torch
    from peft import PeftModel

    from tasks.core.models import load_base_model, resolve_placement

    scored: list[bytes] = []  # the weights of every adapter scored (fetched copies are gone afterwards)

    @torch.no_grad()
    def score(folder: Path) -> float:
        scored.append(weights(folder))
        base, tokenizer, _ = load_base_model(str(tiny_model_dir), resolve_placement("cpu", "fp32"))
        model = PeftModel.from_pretrained(base, folder).eval()
        ids = tokenizer(HELD_OUT, return_tensors="pt").input_ids
        return model(input_ids=ids, labels=ids).loss.item()

    score.scored = scored
    return score


def publish(name: str, folder: Path) -> str:
    with tracking.start_run("champion-tests") as run:
        return publishing.publish_adapter(folder, f"mlflow://{name}", CARD, mlflow_run_id=run.info.run_id).uri


def loss_score(held_out_loss, folder: Path) -> Score:
    return Score("eval_loss", held_out_loss(folder), higher_is_better=False)


def weights(folder: Path) -> bytes:
    return (folder / "adapter_model.safetensors").read_bytes()


def test_the_alias_moves_only_to_a_version_at_least_as_good(adapters, held_out_loss):
    name = "champ-lora"
    assert publishing.current_champion(name) is None  # no such model yet
    first = publish(name, adapters["mid"])
    decision = publishing.promote_if_better(first, loss_score(held_out_loss, adapters["mid"]), held_out_loss)
    assert decision.promoted and decision.previous is None and decision.champion_score is None
    assert publishing.current_champion(name).uri == first == "mlflow://champ-lora/1"
    assert decision.tags()["champion.previous"] == "none" and decision.tags()["champion.promoted"] == "true"

    # Worse on the same held-out text: the alias stays, and the champion was scored on its fetched copy.
    worse = publish(name, adapters["worst"])
    candidate = loss_score(held_out_loss, adapters["worst"])
    held_out_loss.scored.clear()
    decision = publishing.promote_if_better(worse, candidate, held_out_loss)
    assert held_out_loss.scored == [weights(adapters["mid"])]
    assert not decision.promoted and decision.previous == first
    assert decision.champion_score == pytest.approx(held_out_loss(adapters["mid"]))
    assert decision.champion_score < candidate.value
    assert "not at least as good" in decision.reason and "lower is better" in decision.reason
    assert publishing.current_champion(name).version == "1"
    tags = decision.tags()
    assert tags["champion.promoted"] == "false" and tags["champion.previous"] == "mlflow://champ-lora/1"
    assert float(tags["champion.candidate_score"]) == pytest.approx(candidate.value, rel=1e-5)
    assert float(tags["champion.previous_score"]) == pytest.approx(decision.champion_score, rel=1e-5)

    better = publish(name, adapters["best"])
    decision = publishing.promote_if_better(better, loss_score(held_out_loss, adapters["best"]), held_out_loss)
    assert decision.promoted and decision.previous == first and publishing.current_champion(name).version == "3"

    # Exactly as good (the same adapter again) is good enough.
    tie = publish(name, adapters["best"])
    decision = publishing.promote_if_better(tie, loss_score(held_out_loss, adapters["best"]), held_out_loss)
    assert decision.promoted and decision.champion_score == pytest.approx(decision.candidate_score)
    assert publishing.current_champion(name).version == "4"

    # A registered name without a version is the champion, not the newest version.
    newest = publish(name, adapters["worst"])
    assert not publishing.promote_if_better(
        newest, loss_score(held_out_loss, adapters["worst"]), held_out_loss
    ).promoted
    with publishing.fetched_adapter(f"mlflow://{name}") as fetched:
        assert weights(fetched) == weights(adapters["best"])
    assert f"mlflow://{name}@champion" in publishing.registered_adapter_uris(2)

    from mlflow import MlflowClient

    version = MlflowClient().get_model_version(name, "4")
    assert version.tags["eval.metric"] == "eval_loss" and float(version.tags["eval.score"]) > 0


def test_promote_modes_and_unverified_copies(adapters, held_out_loss):
    name = "modes-lora"
    first = publish(name, adapters["mid"])
    assert publishing.promote_if_better(first, loss_score(held_out_loss, adapters["mid"]), held_out_loss).promoted
    better = publish(name, adapters["best"])
    best = loss_score(held_out_loss, adapters["best"])

    never = publishing.promote_if_better(better, best, held_out_loss, mode="never")
    assert not never.promoted and never.reason == "publish.promote=never"
    unverified = publishing.promote_if_better(better, best, held_out_loss, verified=False)
    assert not unverified.promoted and "not verified" in unverified.reason
    assert publishing.current_champion(name).version == "1"

    worse = publish(name, adapters["worst"])
    forced = publishing.promote_if_better(worse, loss_score(held_out_loss, adapters["worst"]), held_out_loss, "always")
    assert forced.promoted and forced.previous == first and publishing.current_champion(name).version == "3"

    with pytest.raises(PublishError, match="publish.promote='sometimes'"):
        publishing.promote_if_better(better, best, held_out_loss, mode="sometimes")
    with pytest.raises(PublishError, match="only a pinned mlflow://NAME/VERSION"):
        publishing.promote_if_better("mlflow://modes-lora", best, held_out_loss)
    with pytest.raises(ConfigError, match="publish.promote"):
        load_config(LoraFinetuneConfig, "configs/lora_demo.yaml", ["publish.promote=sometimes"])


def test_higher_is_better_and_champions_that_cannot_be_compared(adapters):
    name = "dpo-lora"
    first = publish(name, adapters["mid"])
    assert publishing.promote_if_better(first, Score("reward_accuracy", 0.75, True), lambda folder: 0.0).promoted

    second = publish(name, adapters["best"])
    lower = publishing.promote_if_better(second, Score("reward_accuracy", 0.5, True), lambda folder: 0.75)
    assert not lower.promoted and "higher is better" in lower.reason

    def other_base(folder: Path) -> float:
        raise publishing.NotComparable("the champion was trained on another base")

    refused = publishing.promote_if_better(second, Score("reward_accuracy", 0.9, True), other_base)
    assert not refused.promoted and "cannot be compared: the champion was trained on another base" in refused.reason
    equal = publishing.promote_if_better(second, Score("reward_accuracy", 0.75, True), lambda folder: 0.75)
    assert equal.promoted and publishing.current_champion(name).version == "2"


def test_an_alias_on_a_deleted_version_is_reported_not_followed(adapters, held_out_loss, isolated_data_dir):
    from mlflow import MlflowClient

    name = "broken-lora"
    first = publish(name, adapters["best"])
    assert publishing.promote_if_better(first, loss_score(held_out_loss, adapters["best"]), held_out_loss).promoted
    second = publish(name, adapters["mid"])
    # Version 1 goes; a registry that keeps the alias (the embedded store drops it with the version,
    # other stores and concurrent writers need not) leaves it pointing at nothing.
    MlflowClient().delete_model_version(name, "1")
    with sqlite3.connect(isolated_data_dir / "mlflow.db") as db:
        db.execute("INSERT INTO registered_model_aliases (name, alias, version) VALUES (?, 'champion', 1)", (name,))

    reported = "mlflow://broken-lora@champion points at version 1, which the registry no longer has; not followed"
    with pytest.raises(PublishError, match=reported):
        publishing.current_champion(name)
    for uri in (f"mlflow://{name}", f"mlflow://{name}@champion"):
        with pytest.raises(PublishError, match=reported):
            publishing.fetch_adapter(uri)
    assert publishing.fetch_adapter(second).is_dir()  # a pinned version still fetches

    decision = publishing.promote_if_better(second, loss_score(held_out_loss, adapters["mid"]), held_out_loss)
    assert decision.promoted and "no longer has" in decision.reason
    assert publishing.current_champion(name).uri == second
