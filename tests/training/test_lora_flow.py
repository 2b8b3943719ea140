"""`lora-finetune` end to end on the tiny model: Prefect flow, MLflow conventions, publish, verify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.core.config import load_config
from tasks.training.config import LoraFinetuneConfig

COLORS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]


def write_tiny_dataset(path: Path, n: int = 240) -> Path:
    """A learnable mapping: the reply repeats the color the user named, in a fixed sentence."""
    with open(path, "w") as handle:
        for i in range(n):
            color = COLORS[i % len(COLORS)]
            handle.write(
                json.dumps({"instruction": f"Name the color {color}.", "output": f"The color is {color}."}) + "\n"
            )
    return path


def tiny_overrides(model_dir: Path, data_file: Path, publish_uri: str, steps: int = 30) -> list[str]:
    return [
        f"model.name={model_dir}",
        f"data.train={data_file}",
        "data.max_eval_rows=32",
        f"train.max_steps={steps}",
        "train.learning_rate=0.01",
        "train.batch_size=8",
        "train.logging_steps=5",
        "train.save_steps=10",
        "model.max_length=64",
        "eval.max_new_tokens=8",
        f"publish.uri={publish_uri}",
        "lora.r=8",
    ]


@pytest.fixture(scope="module")
def mlflow_client():
    import mlflow

    from tasks.core import tracking

    mlflow.set_tracking_uri(tracking.tracking_uri())
    return mlflow.MlflowClient()


def test_flow_trains_tracks_publishes_and_verifies(prefect_harness, tiny_model_dir, tmp_path, mlflow_client):
    from flows.lora_finetune import lora_finetune

    data_file = write_tiny_dataset(tmp_path / "colors.jsonl")
    run = lora_finetune(
        config="configs/lora_demo.yaml",
        overrides=tiny_overrides(tiny_model_dir, data_file, "mlflow://tiny-colors-lora"),
    )

    # Training helped on held-out data, and the published adapter is the trained one.
    verification = run.publication.verification
    assert run.evaluation.eval_loss < run.evaluation.base_eval_loss - 0.5
    assert verification.passed and verification.tensors_identical
    assert verification.max_abs_logit_diff <= 1e-4
    assert run.publication.published.uri == "mlflow://tiny-colors-lora/1"
    assert run.train.steps == 30 and run.train.tokens_per_second > 0
    assert not Path(run.train.output_dir).exists()  # published: checkpoints removed

    # MLflow conventions that dashboards rely on.
    experiment = mlflow_client.get_experiment_by_name("lora-finetune")
    tracked = mlflow_client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])[0]
    params, metrics, tags = tracked.data.params, tracked.data.metrics, tracked.data.tags
    assert params["train.max_steps"] == "30" and params["lora.r"] == "8"
    assert params["model.name"] == str(tiny_model_dir) and params["publish.uri"] == "mlflow://tiny-colors-lora"
    for name in (
        "eval_loss",
        "base_eval_loss",
        "eval_perplexity",
        "base_eval_perplexity",
        "train_tokens_per_second",
        "train_loss",
    ):
        assert name in metrics, name
    curve = mlflow_client.get_metric_history(tracked.info.run_id, "train_loss")
    assert [m.step for m in curve] == [5, 10, 15, 20, 25, 30]
    assert tags["verify.status"] == "passed" and tags["publish.uri"] == "mlflow://tiny-colors-lora/1"
    assert len(tags["dataset.fingerprint"]) == 16 and tags["prefect.flow_run_id"]
    assert tags["git.commit"]
    artifacts = {a.path for a in mlflow_client.list_artifacts(tracked.info.run_id)}
    assert {"config.yaml", "adapter"} <= artifacts
    # The adapter is logged as an MLflow model, the adapter folder inside it.
    model_files = {Path(a.path).name for a in mlflow_client.list_artifacts(tracked.info.run_id, "adapter")}
    assert {"MLmodel", "chat_pyfunc.py", "input_example.json", "requirements.txt"} <= model_files
    inside = mlflow_client.list_artifacts(tracked.info.run_id, "adapter/artifacts/adapter")
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "ftllm.json"} <= {
        Path(a.path).name for a in inside
    }

    # A second run publishes a new registry version.
    again = lora_finetune(
        config="configs/lora_demo.yaml",
        overrides=tiny_overrides(tiny_model_dir, data_file, "mlflow://tiny-colors-lora", steps=1),
    )
    assert again.publication.published.uri == "mlflow://tiny-colors-lora/2" and again.publication.verification.passed

    # The first version became the champion; the second, trained one step, challenged it on the same
    # held-out rows (the champion scores there what its own run measured) and lost.
    assert run.champion.promoted and run.champion.previous is None and tags["champion.promoted"] == "true"
    assert not again.champion.promoted and again.champion.previous == "mlflow://tiny-colors-lora/1"
    assert again.champion.champion_score == pytest.approx(run.evaluation.eval_loss, abs=1e-4)
    assert again.champion.candidate_score == again.evaluation.eval_loss > run.evaluation.eval_loss
    lost = mlflow_client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])[0].data.tags
    assert lost["champion.promoted"] == "false" and lost["champion.previous"] == "mlflow://tiny-colors-lora/1"
    assert lost["champion.metric"] == "eval_loss" and "not at least as good" in lost["champion.reason"]
    assert float(lost["champion.previous_score"]) == pytest.approx(run.evaluation.eval_loss, rel=1e-4)
    assert str(mlflow_client.get_model_version_by_alias("tiny-colors-lora", "champion").version) == "1"


def test_flow_publishes_to_a_folder_and_the_summary_artifact_tells_the_story(prefect_harness, tiny_model_dir, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.lora_finetune import lora_finetune

    target = tmp_path / "published"
    run = lora_finetune(
        config="configs/lora_demo.yaml",
        overrides=tiny_overrides(tiny_model_dir, write_tiny_dataset(tmp_path / "c.jsonl"), target.as_uri(), steps=10),
    )
    assert run.publication.verification.passed and (target / "adapter_model.safetensors").is_file()
    card = (target / "README.md").read_text()
    assert "lora-finetune" in card and str(tiny_model_dir) not in card  # never a local path in the card

    import asyncio

    async def latest_summary():
        async with get_client() as client:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
            from prefect.client.schemas.sorting import ArtifactSort

            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["lora-finetune-summary"])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )  # this run's: the newest version of the key
            return found[0].data

    markdown = asyncio.run(latest_summary())
    for expected in (
        "## Data",
        "trainable params",
        "## Held-out evaluation",
        "tokens/s",
        target.as_uri(),
        "## Verification",
        "MLflow",
    ):
        assert expected in markdown, expected


def test_bad_rows_stop_the_run_before_training_and_the_failure_is_recorded(
    prefect_harness, tiny_model_dir, tmp_path, capsys
):
    from flows.lora_finetune import main

    data_file = write_tiny_dataset(tmp_path / "c.jsonl", n=40)
    with open(data_file, "a") as handle:
        handle.write(json.dumps({"instruction": "no output"}) + "\n")
    overrides = tiny_overrides(tiny_model_dir, data_file, (tmp_path / "out").as_uri(), steps=5)
    argv = ["--config", "configs/lora_demo.yaml"] + [arg for o in overrides for arg in ("--set", o)]
    assert main(argv + ["--set", "data.on_bad_rows=fail"]) == 1
    err = capsys.readouterr().err
    assert "1 malformed row(s)" in err and "c.jsonl row 41: missing field 'output'" in err
    assert not (tmp_path / "out").exists()
    # With data.on_bad_rows=drop the same data trains on the good rows.
    assert main(argv + ["--set", "data.on_bad_rows=drop"]) == 0
    assert "lora-finetune completed: 5 steps" in capsys.readouterr().out


def test_mlflow_unreachable_fails_before_any_training(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import socket

    from flows.lora_finetune import main
    from tasks.training import checkpoints

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed}")
    overrides = tiny_overrides(tiny_model_dir, write_tiny_dataset(tmp_path / "c.jsonl", n=40), "file:///tmp/x", 5)
    cfg = load_config(LoraFinetuneConfig, "configs/lora_demo.yaml", overrides)
    assert main(["--config", "configs/lora_demo.yaml"] + [a for o in overrides for a in ("--set", o)]) == 1
    err = capsys.readouterr().err
    assert f"MLflow tracking server http://127.0.0.1:{closed} is unreachable" in err
    assert not checkpoints.checkpoint_dir("lora-finetune", cfg).exists()
