"""Training faults injected for real: a training flow SIGKILLed after its first checkpoint resumes
from it on the rerun; an unreachable MLflow server stops a run before any training starts.

Each flow runs as a child process (`python -m flows.<name>`) against a real Prefect server, with
its own FTLLM_DATA_DIR (MLflow store, checkpoints), on the tiny model.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tasks.core.config import load_config
from tests.support.processes import child_env, kill_group, metric_history, mlflow_runs, run_flow, start_flow, wait_for

pytestmark = pytest.mark.timeout(400)

POLITE, RUDE = "Thank you very much for asking.", "The quick brown fox jumps over the lazy dog."


def alpaca_rows(path: Path, n: int = 240) -> str:
    with open(path, "w") as handle:
        for i in range(n):
            handle.write(
                json.dumps(
                    {
                        "instruction": f"What is {i} plus {i}?",
                        "output": f"It is {2 * i}. Thank you for asking question number {i}.",
                    }
                )
                + "\n"
            )
    return str(path)


def preference_rows(path: Path, n: int = 64) -> str:
    with open(path, "w") as handle:
        for i in range(n):
            prompt = f"\n\nHuman: Hello number {i}\n\nAssistant: Hi.\n\nHuman: What is {i} plus {i}?"
            handle.write(
                json.dumps({"chosen": f"{prompt}\n\nAssistant: {POLITE}", "rejected": f"{prompt}\n\nAssistant: {RUDE}"})
                + "\n"
            )
    return str(path)


# Enough steps between checkpoints that a SIGKILL lands after the first one and long before the end.
MAX_STEPS, SAVE_STEPS = 60, 10


def lora_setup(tiny_model_dir: Path, tmp_path: Path):
    from tasks.training.config import LoraFinetuneConfig

    overrides = [
        f"model.name={tiny_model_dir}",
        "model.max_length=64",
        f"data.train={alpaca_rows(tmp_path / 'a.jsonl')}",
        "data.max_eval_rows=8",
        f"train.max_steps={MAX_STEPS}",
        "train.batch_size=4",
        f"train.save_steps={SAVE_STEPS}",
        "train.logging_steps=5",
        "train.save_total_limit=2",
        "train.lr_scheduler=cosine",
        "lora.r=4",
        "lora.alpha=8",
        "eval.sample_prompts=[hi]",
        "eval.max_new_tokens=4",
        f"publish.uri=file://{tmp_path / 'published'}",
    ]
    return "lora_finetune", "lora-finetune", "configs/lora_demo.yaml", LoraFinetuneConfig, overrides


def dpo_setup(tiny_model_dir: Path, tmp_path: Path):
    from tasks.training.config import DpoFinetuneConfig

    overrides = [
        f"model.name={tiny_model_dir}",
        "model.max_length=96",
        "dpo.max_prompt_tokens=64",
        f"data.train={preference_rows(tmp_path / 'p.jsonl')}",
        "data.eval_fraction=0.25",
        f"train.max_steps={MAX_STEPS}",
        "train.batch_size=4",
        "train.learning_rate=0.002",
        "train.lr_scheduler=constant",
        "train.warmup_ratio=0.0",
        "train.logging_steps=5",
        f"train.save_steps={SAVE_STEPS}",
        "eval.batch_size=16",
        "lora.r=8",
        "lora.alpha=16",
        f"publish.uri=file://{tmp_path / 'published'}",
        "eval.sample_prompts=[What is two plus two]",
    ]
    return "dpo_finetune", "dpo-finetune", "configs/dpo_demo.yaml", DpoFinetuneConfig, overrides


def checkpoints(folder: Path) -> list[int]:
    """Steps of the complete checkpoints (trainer_state.json is written last)."""
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name.split("-")[-1]) for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
    )


def final_loss(data_dir: Path, run) -> tuple[int, float]:
    history = metric_history(data_dir, run.info.run_id, "train_loss")
    assert history, f"run {run.info.run_id} logged no train_loss"
    return history[-1]


@pytest.mark.slow
@pytest.mark.parametrize("setup", [lora_setup, dpo_setup], ids=["lora-finetune", "dpo-finetune"])
def test_killed_training_resumes_from_its_checkpoint(setup, prefect_server, tiny_model_dir, tmp_path):
    module, flow, config, config_cls, overrides = setup(tiny_model_dir, tmp_path)
    argv = ["--config", config, *[f"--set={o}" for o in overrides]]

    # 1. The uninterrupted run: the reference for step count and loss (it removes its checkpoints).
    clean_dir = tmp_path / "clean"
    assert run_flow(module, argv, child_env(prefect_server, clean_dir), tmp_path / "clean.log") == 0, (
        tmp_path / "clean.log"
    ).read_text()[-4000:]
    (clean_run,) = mlflow_runs(clean_dir, flow)
    assert clean_run.data.tags["train.resumed_from_step"] == "0"

    # 2. The same config in a fresh data folder, SIGKILLed once its first checkpoint is complete.
    data_dir = tmp_path / "crash"
    env = child_env(prefect_server, data_dir)
    folder = _checkpoint_dir(config_cls, config, overrides, data_dir, flow)
    process = start_flow(module, argv, env, tmp_path / "killed.log")
    try:
        wait_for(lambda: checkpoints(folder) or process.poll() is not None, 300, "the first checkpoint")
        assert process.poll() is None, (
            f"the run ended before it could be killed: {(tmp_path / 'killed.log').read_text()[-3000:]}"
        )
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        kill_group(process)
    assert process.returncode == -signal.SIGKILL
    survived = checkpoints(folder)
    assert survived and survived[-1] < MAX_STEPS, f"killed too late: checkpoints {survived}"
    resume_step = survived[-1]

    # 3. The rerun with the same config resumes from that checkpoint and reaches the same step.
    assert run_flow(module, argv, env, tmp_path / "rerun.log") == 0, (tmp_path / "rerun.log").read_text()[-4000:]
    killed_run, rerun = mlflow_runs(data_dir, flow)
    assert killed_run.info.status == "RUNNING"  # SIGKILL: MLflow never heard the end of it
    assert rerun.info.status == "FINISHED"
    assert rerun.data.tags["train.resumed_from_step"] == str(resume_step)
    clean_step, clean_loss = final_loss(clean_dir, clean_run)
    resumed_step, resumed_loss = final_loss(data_dir, rerun)
    assert clean_step == resumed_step == MAX_STEPS
    # Optimizer, scheduler, RNG and data position restored: the final loss is within the noise of the
    # uninterrupted run's own curve (the spread of its last three logged losses; at least 5 %): the
    # resumed run's losses are close to the uninterrupted run's, not bit-identical.
    clean_curve = [loss for _, loss in metric_history(clean_dir, clean_run.info.run_id, "train_loss")]
    noise = max(max(clean_curve[-3:]) - min(clean_curve[-3:]), 0.05 * abs(clean_loss))
    assert abs(resumed_loss - clean_loss) <= noise, (clean_loss, resumed_loss, noise)
    history = metric_history(data_dir, rerun.info.run_id, "train_loss")
    assert history[0][0] > resume_step, "the rerun logged steps it should have skipped"
    print(
        f"\n{flow}: killed after checkpoint {resume_step}, resumed to step {resumed_step}; "
        f"final loss clean {clean_loss:.6f} vs resumed {resumed_loss:.6f} (|diff| {abs(resumed_loss - clean_loss):.2e}, "
        f"noise {noise:.2e})"
    )
    assert not folder.exists()  # published: the rerun removed its checkpoints


def _checkpoint_dir(config_cls, config: str, overrides: list[str], data_dir: Path, flow: str) -> Path:
    """`tasks.training.checkpoints.checkpoint_dir` as the child computes it under its FTLLM_DATA_DIR."""
    from tasks.training import checkpoints

    previous = os.environ.get("FTLLM_DATA_DIR")
    os.environ["FTLLM_DATA_DIR"] = str(data_dir)
    try:
        return checkpoints.checkpoint_dir(flow, load_config(config_cls, config, overrides))
    finally:
        os.environ["FTLLM_DATA_DIR"] = previous or ""


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.mark.slow
def test_unreachable_mlflow_fails_dpo_before_training(prefect_server, tiny_model_dir, tmp_path):
    # (lora-finetune: tests/training/test_lora_flow.py::test_mlflow_unreachable_fails_before_any_training)
    module, flow, config, _config_cls, overrides = dpo_setup(tiny_model_dir, tmp_path)
    uri = f"http://127.0.0.1:{closed_port()}"
    data_dir = tmp_path / "data"
    env = child_env(prefect_server, data_dir, MLFLOW_TRACKING_URI=uri)
    started = time.monotonic()
    code = run_flow(module, ["--config", config, *[f"--set={o}" for o in overrides]], env, tmp_path / "run.log")
    output = (tmp_path / "run.log").read_text()
    assert code == 1, output[-3000:]
    assert f"{flow} FAILED: TrackingUnavailable: MLflow tracking server {uri} is unreachable" in output
    assert not (data_dir / "checkpoints").exists()  # nothing trained, nothing written
    assert "load_dataset" not in output and "Task run" not in output  # no task ever started
    assert time.monotonic() - started < 120
