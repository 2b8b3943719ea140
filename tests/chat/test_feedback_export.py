"""feedback-export: judgements in the database → deduplicated pairs in dpo-finetune's format, split by
prompt, logged to MLflow as dataset inputs with the counts; malformed rows reported and skipped."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from tasks.chat.feedback.records import Judgement
from tasks.chat.feedback.store import FeedbackStore, judgements
from tasks.training.config import DataOptions
from tasks.training.preferences import load_preferences
from tasks.training.rows import DataError


def pick(i: int, verdict: str, session: str = "s1") -> Judgement:
    prompt = [{"role": "user", "content": f"Question {i}?"}]
    return Judgement(
        session, verdict, prompt, f"left answer {i}", "champion", "m@champion=1", f"right {i}", "cand", "m/2"
    )


@pytest.fixture()
def filled_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'judgements.db'}"
    store = FeedbackStore(url)
    for i in range(10):
        store.add(pick(i, "left"))
    store.add(pick(0, "left", session="s2"))  # the same pair from a second user: one pair
    store.add(pick(10, "tie"))
    store.add(Judgement("s1", "up", [{"role": "user", "content": "Alone?"}], "yes", "cand", "m/2"))  # lone
    with store.engine.begin() as connection:  # rows another tool (or an old app) wrote badly
        base = {"session": "x", "kind": "pick", "verdict": "left", "reply_a": "a", "model_a": "m", "version_a": "m"}
        connection.execute(
            judgements.insert()
            .values(key="bad-json", prompt="{not json", settings="{}", reply_b="b", **base)
            .values(created_at=sa.func.current_timestamp())
        )
        connection.execute(
            judgements.insert()
            .values(key="bad-verdict", prompt=json.dumps([{"role": "user", "content": "q"}]), settings="{}", **base)
            .values(verdict="maybe", reply_b="b", created_at=sa.func.current_timestamp())
        )
    yield url
    store.close()


def test_export_writes_the_pairs_logs_the_dataset_and_dpo_reads_them(filled_store, prefect_harness, isolated_data_dir):
    import mlflow

    from flows.feedback_export import feedback_export

    with pytest.raises(DataError, match="run feedback-export first"):
        load_preferences(DataOptions(train="feedback"))
    result = feedback_export(overrides=[f"feedback.database={filled_store}", "export.eval_fraction=0.2"])
    assert result["judgements"] == 15 and len(result["malformed"]) == 2
    assert any("not JSON" in m for m in result["malformed"]) and any(
        "unknown verdict" in m for m in result["malformed"]
    )
    assert (result["pairs"], result["ties_dropped"], result["duplicates_removed"], result["lone_ratings"]) == (
        10,
        1,
        1,
        1,
    )
    assert (result["train_pairs"], result["eval_pairs"]) == (8, 2)
    assert result["pairs_per_version"] == {"m@champion=1": 10}
    assert result["versions"]["m/2"]["losses"] == 11 and result["versions"]["m@champion=1"]["win_rate"] == 1.0

    run = mlflow.get_run(result["mlflow_run_id"])
    assert run.data.metrics["feedback_pairs"] == 10 and run.data.metrics["feedback_duplicates_removed"] == 1
    assert (
        run.data.metrics["win_rate.m_champion_1"] == 1.0 and run.data.metrics["judgements.m_2"] == 13
    )  # 11 picks, a tie, a lone thumb
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"feedback-training", "feedback-evaluation"}
    assert json.loads(inputs["feedback-training"].dataset.profile)["num_rows"] == 8
    assert "s3cret" not in json.dumps(run.data.params)

    prefs = load_preferences(DataOptions(train="feedback"))  # what dpo-finetune does with data.train: feedback
    assert len(prefs.train) == 8 and len(prefs.eval) == 2
    train_prompts = {json.dumps(r["prompt"]) for r in prefs.train}
    assert not train_prompts & {json.dumps(r["prompt"]) for r in prefs.eval}
    assert prefs.train[0]["chosen"][0]["content"].startswith("left answer")


def test_too_few_pairs_fail_with_the_counts(tmp_path):
    from tasks.chat.feedback.config import ExportOptions
    from tasks.chat.feedback.export import export_pairs

    store = FeedbackStore(f"sqlite:///{tmp_path / 'few.db'}")
    store.add(pick(1, "tie"))
    with pytest.raises(ValueError, match=r"0 preference pair\(s\) from 1 judgement\(s\) \(ties dropped 1"):
        export_pairs(store, ExportOptions(output_dir=str(tmp_path / "out")))
