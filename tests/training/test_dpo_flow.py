"""The `dpo-finetune` flow end to end on the tiny model: Prefect, MLflow, the gate, publish, verify, SFT-then-DPO."""

from __future__ import annotations

import json

import pytest

from tasks import publishing

POLITE, RUDE = "Thank you very much for asking.", "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def hh_pair(i: int, chosen: str, rejected: str) -> dict:
    prompt = f"\n\nHuman: Hello number {i}\n\nAssistant: Hi.\n\nHuman: What is {i} plus {i}?"
    return {"chosen": f"{prompt}\n\nAssistant: {chosen}", "rejected": f"{prompt}\n\nAssistant: {rejected}"}


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def tiny_overrides(tiny_model_dir, tmp_path, train: str, publish_dir) -> list[str]:
    return [
        f"model.name={tiny_model_dir}",
        "model.max_length=96",
        "dpo.max_prompt_tokens=64",
        f"data.train={train}",
        "data.eval_fraction=0.25",
        "data.on_bad_rows=drop",
        "train.max_steps=8",
        "train.batch_size=4",
        "train.learning_rate=0.002",
        "train.lr_scheduler=constant",
        "train.warmup_ratio=0.0",
        "train.logging_steps=2",
        "train.save_steps=4",
        "eval.batch_size=16",
        f"train.output_dir={tmp_path / 'checkpoints'}",
        "lora.r=8",
        "lora.alpha=16",
        f"publish.uri=file://{publish_dir}",
        "eval.sample_prompts=[What is two plus two]",
    ]


def last_run(experiment: str = "dpo-finetune"):
    import mlflow

    from tasks.core import tracking

    tracking.configure()
    runs = mlflow.search_runs(
        experiment_names=[experiment], order_by=["attributes.start_time DESC"], output_format="list"
    )
    return runs[0]


def test_flow_trains_gates_publishes_and_verifies(prefect_harness, tiny_model_dir, tmp_path, capsys):
    from flows.dpo_finetune import main

    records = [hh_pair(i, POLITE, RUDE) for i in range(48)]
    records.insert(5, hh_pair(999, POLITE, POLITE))  # a bad row: reported with its row number, dropped
    train = write_jsonl(tmp_path / "prefs.jsonl", records)
    published = tmp_path / "published"
    argv = [f"--set={o}" for o in tiny_overrides(tiny_model_dir, tmp_path, train, published)]
    assert main(["--config", "configs/dpo_demo.yaml", *argv]) == 0
    printed = capsys.readouterr().out
    assert "held-out reward accuracy: untrained 0.500 -> trained" in printed and "verified: True" in printed

    run = last_run()
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics["base_eval_rewards/accuracies"] == 0.5 and metrics["base_eval_rewards/margins"] == 0.0
    assert metrics["eval_rewards/accuracies"] > 0.9 and metrics["eval_rewards/margins"] > 0
    for name in ("rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "train_loss"):
        assert name in metrics  # what TRL reports while training, under its own names
    assert tags["gate.status"] == "passed" and tags["verify.status"] == "passed"
    assert tags["publish.uri"] == f"file://{published}" and tags["init_adapter"] == "none"
    assert tags["dataset.fingerprint"] and run.data.params["dpo.beta"] == "0.1"
    assert metrics["data_bad_rows"] == 1

    assert (published / "adapter_model.safetensors").is_file() and not (published / "ref").exists()
    recorded = json.loads((published / "ftllm.json").read_text())
    assert recorded["base_model"] == str(tiny_model_dir) and recorded["flow"] == "dpo-finetune"
    card = (published / "README.md").read_text()
    assert "eval_rewards/accuracies" in card and str(tmp_path) not in card  # metrics, and no local paths
    assert not (tmp_path / "checkpoints").exists()  # published: checkpoints removed, a rerun starts fresh


def test_failed_gate_fails_the_run_and_publishes_nothing(prefect_harness, tiny_model_dir, tmp_path):
    from flows.dpo_finetune import dpo_finetune

    train = write_jsonl(tmp_path / "train.jsonl", [hh_pair(i, POLITE, RUDE) for i in range(32)])
    # Held-out people prefer the opposite: an adapter that learned the training preference must not ship.
    held_out = write_jsonl(tmp_path / "eval.jsonl", [hh_pair(i, RUDE, POLITE) for i in range(100, 112)])
    published = tmp_path / "published"
    overrides = tiny_overrides(tiny_model_dir, tmp_path, train, published) + [f"data.eval={held_out}"]
    state = dpo_finetune(config="configs/dpo_demo.yaml", overrides=overrides, return_state=True)
    assert state.is_failed()
    assert "quality gate failed, nothing published: held-out reward accuracy" in state.message
    assert "does not beat dpo.min_reward_accuracy=0.500" in state.message
    assert not published.exists()
    run = last_run()
    assert run.data.tags["gate.status"] == "failed" and "verify.status" not in run.data.tags
    assert run.data.metrics["eval_rewards/accuracies"] < 0.5
    assert run.info.status == "FAILED"


def test_sft_then_dpo_starts_from_a_lora_finetune_publish(prefect_harness, tiny_model_dir, tmp_path):
    """SFT and DPO publish to one registered model: the SFT version is the champion the DPO run starts
    from (`mlflow://NAME` is its @champion) and then challenges on the DPO run's held-out pairs."""
    from flows.dpo_finetune import dpo_finetune
    from flows.lora_finetune import lora_finetune

    name = "tiny-sft-dpo"
    sft = lora_finetune(
        config="configs/lora_demo.yaml",
        overrides=[
            f"model.name={tiny_model_dir}",
            "model.max_length=64",
            "data.max_train_rows=32",
            "data.max_eval_rows=8",
            "train.max_steps=3",
            "train.batch_size=4",
            f"train.output_dir={tmp_path / 'sft-checkpoints'}",
            "lora.r=4",
            "lora.alpha=8",
            f"publish.uri=mlflow://{name}",
            "eval.max_new_tokens=4",
            "eval.sample_prompts=[Hi]",
        ],
    )
    assert sft.publication.published.uri == f"mlflow://{name}/1" and sft.champion.promoted

    train = write_jsonl(tmp_path / "prefs.jsonl", [hh_pair(i, POLITE, RUDE) for i in range(32)])
    overrides = tiny_overrides(tiny_model_dir, tmp_path, train, tmp_path / "unused")
    run = dpo_finetune(
        config="configs/sft_then_dpo.yaml",
        overrides=[*overrides, f"publish.uri=mlflow://{name}", f"init_adapter=mlflow://{name}"],
    )
    assert run.params.start.startswith(f"adapter mlflow://{name}")
    assert run.evaluation.untrained["rewards/accuracies"] == 0.5  # starts at its reference: the SFT adapter
    assert run.evaluation.trained["rewards/accuracies"] > 0.9
    assert run.publication.verification.passed and run.publication.published.uri == f"mlflow://{name}/2"
    with publishing.fetched_adapter(f"mlflow://{name}/1") as first:
        sft_config = json.loads((first / "adapter_config.json").read_text())
    with publishing.fetched_adapter(f"mlflow://{name}/2") as second:
        dpo_config = json.loads((second / "adapter_config.json").read_text())
    assert dpo_config["r"] == sft_config["r"] == 4  # the SFT adapter's shape, trained further

    # The champion (the SFT adapter, i.e. this run's reference) scored on the same pairs: every
    # implicit reward 0, so exactly 0.5; the DPO version beats it and takes the alias.
    decision = run.champion
    assert decision.previous == f"mlflow://{name}/1" and decision.champion_score == 0.5
    assert decision.promoted and decision.candidate_score == run.evaluation.trained["rewards/accuracies"]
    tags = last_run().data.tags
    assert tags["init_adapter"] == f"mlflow://{name}" and tags["champion.metric"] == "reward_accuracy"
    assert tags["champion.promoted"] == "true" and tags["champion.previous_score"] == "0.5"


def test_init_adapter_for_another_base_model_is_refused(prefect_harness, tiny_model_dir, tmp_path):
    from flows.dpo_finetune import dpo_finetune
    from tasks.core import models
    from tasks.training.lora import freeze_and_apply_lora

    # A real adapter folder whose record names another base model.
    model, _, _ = models.load_base_model(str(tiny_model_dir), models.resolve_placement("cpu"))
    folder = tmp_path / "foreign"
    freeze_and_apply_lora(model, 4, 8, 0.0, ["all-linear"]).save_pretrained(folder)
    (folder / "ftllm.json").write_text(json.dumps({"base_model": "HuggingFaceTB/SmolLM2-360M-Instruct"}))
    train = write_jsonl(tmp_path / "prefs.jsonl", [hh_pair(i, POLITE, RUDE) for i in range(8)])
    state = dpo_finetune(
        config="configs/dpo_demo.yaml",
        return_state=True,
        overrides=tiny_overrides(tiny_model_dir, tmp_path, train, tmp_path / "out") + [f"init_adapter=file://{folder}"],
    )
    assert state.is_failed()
    assert "init_adapter: file://" in state.message and "HuggingFaceTB/SmolLM2-360M-Instruct" in state.message
