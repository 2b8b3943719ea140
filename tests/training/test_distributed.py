"""`train.launcher: torchrun` on this CPU: real torchrun, gloo, the tiny model, both training flows.

Tolerance of the DDP check, 2 processes against 1 on the same global batch of 8 rows:
- step 1 (the same rows through the same initial weights) within 1e-4: only the order in which
  floating-point sums are reduced differs; a wrong split of the batch, or a loss averaged per rank
  instead of over all tokens, is off by far more;
- later steps within 2% relative: Adam's first updates are nearly sign-like (m / sqrt(v) = +-1 per
  element), so reduction-order noise in near-zero gradient elements flips single updates and the two
  runs drift apart slowly (measured: under 0.2% by step 3).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.training.test_dpo_flow import POLITE, RUDE, hh_pair, write_jsonl
from tests.training.test_dpo_flow import tiny_overrides as dpo_overrides
from tests.training.test_lora_flow import tiny_overrides, write_tiny_dataset

pytestmark = pytest.mark.slow

FIRST_STEP_TOLERANCE = 1e-4
LATER_STEPS_RELATIVE_TOLERANCE = 0.02
STEPS = 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lora_overrides(model_dir: Path, data_file: Path, uri: str, output_dir: Path, *extra: str) -> list[str]:
    return [
        *tiny_overrides(model_dir, data_file, uri, steps=STEPS),
        "lora.dropout=0.0",  # dropout draws differ per rank: the comparison needs none
        "train.logging_steps=1",
        "train.learning_rate=0.002",
        "train.save_steps=4",
        f"train.output_dir={output_dir}",
        *extra,
    ]


def published_versions(name: str) -> list:
    import mlflow

    from tasks.core import tracking

    tracking.configure()
    return mlflow.MlflowClient().search_model_versions(f"name='{name}'")


def runs_publishing_to(uri_prefix: str) -> list:
    import mlflow

    from tasks.core import tracking

    tracking.configure()
    return mlflow.search_runs(
        experiment_names=["lora-finetune"],
        filter_string=f"params.`publish.uri` = '{uri_prefix}'",
        output_format="list",
    )


@pytest.fixture(scope="module")
def colors(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("colors") / "colors.jsonl")


def test_ddp_two_processes_match_one_process_and_publish_once(prefect_harness, tiny_model_dir, colors, tmp_path):
    import mlflow

    from flows.lora_finetune import lora_finetune

    one = lora_finetune(
        overrides=lora_overrides(tiny_model_dir, colors, "mlflow://tiny-one", tmp_path / "one", "train.batch_size=8")
    )
    two = lora_finetune(
        overrides=lora_overrides(
            tiny_model_dir,
            colors,
            "mlflow://tiny-ddp",
            tmp_path / "ddp",
            "train.launcher=torchrun",
            "train.nproc_per_node=2",
            "train.batch_size=4",  # per process: the same global batch of 8
        )
    )
    assert [step for step, _ in two.train.loss_history] == list(range(1, STEPS + 1))
    histories = f"2 processes {two.train.loss_history}, 1 process {one.train.loss_history}"
    for (step, expected), (_, got) in zip(one.train.loss_history, two.train.loss_history, strict=True):
        tolerance = FIRST_STEP_TOLERANCE if step == 1 else LATER_STEPS_RELATIVE_TOLERANCE * expected
        assert abs(got - expected) <= tolerance, f"step {step}: {histories}"
    assert two.train.steps == STEPS and two.train.tokens == one.train.tokens  # tokens of both ranks counted

    # The adapter rank 0 wrote was reloaded, published once and verified against the published copy.
    assert two.publication.published.uri == "mlflow://tiny-ddp/1" and two.publication.verified
    assert len(published_versions("tiny-ddp")) == 1
    assert two.evaluation.eval_loss < two.evaluation.base_eval_loss

    # One MLflow run, and only rank 0 logged into it: one train_loss point per step, not two.
    (tracked,) = runs_publishing_to("mlflow://tiny-ddp")
    history = mlflow.MlflowClient().get_metric_history(tracked.info.run_id, "train_loss")
    assert sorted(point.step for point in history) == list(range(1, STEPS + 1))
    assert tracked.info.status == "FINISHED" and tracked.data.tags["verify.status"] == "passed"
    assert not (tmp_path / "ddp").exists() and not (tmp_path / "ddp.job").exists()  # published: cleaned up


def _kill_rank_when_checkpointed(checkpoint: Path, rank: str, killed: list[int]) -> None:
    import psutil

    deadline = time.monotonic() + 600
    while not checkpoint.is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "tasks.training.distributed_entry" in cmdline and str(checkpoint.parent) + ".job" in cmdline:
            try:
                if process.environ().get("RANK") == rank:
                    process.kill()  # SIGKILL: no handler, no traceback, as when a node runs out of memory
                    killed.append(process.pid)
            except psutil.NoSuchProcess:
                pass


def test_fsdp_killed_rank_fails_the_run_publishes_nothing_and_the_rerun_resumes(
    prefect_harness, tiny_model_dir, colors, tmp_path
):
    from flows.lora_finetune import lora_finetune
    from tasks.training.launcher import DistributedTrainingError

    output_dir = tmp_path / "fsdp"
    overrides = lora_overrides(
        tiny_model_dir,
        colors,
        "mlflow://tiny-fsdp",
        output_dir,
        "train.launcher=torchrun",
        "train.strategy=fsdp",
        "train.nproc_per_node=2",
        "train.batch_size=4",
        "train.max_steps=40",
        "train.save_steps=4",
        "train.logging_steps=4",
    )
    killed: list[int] = []
    killer = threading.Thread(target=_kill_rank_when_checkpointed, args=(output_dir / "checkpoint-4", "1", killed))
    killer.start()
    with pytest.raises(DistributedTrainingError, match=r"rank 1 failed with exit code -9.*SIGKILL"):
        lora_finetune(overrides=overrides)
    killer.join()
    assert killed, "rank 1 finished before it could be killed"
    assert published_versions("tiny-fsdp") == []  # nothing is published from a failed run
    (failed,) = runs_publishing_to("mlflow://tiny-fsdp")
    assert failed.info.status == "FAILED"

    rerun = lora_finetune(overrides=overrides)
    assert rerun.train.resumed_from_step >= 4 and rerun.train.steps == 40
    assert rerun.publication.published.uri == "mlflow://tiny-fsdp/1" and rerun.publication.verified
    assert rerun.publication.verification.max_abs_logit_diff <= 1e-4


def test_two_nodes_rendezvous_on_localhost_and_train(prefect_harness, tiny_model_dir, colors, tmp_path):
    from flows.lora_finetune import lora_finetune

    output_dir = tmp_path / "two-nodes"
    job_file = output_dir.with_name("two-nodes.job") / "job.json"
    endpoint = f"127.0.0.1:{free_port()}"
    node_options = ["train.nnodes=2", f"train.rdzv_endpoint={endpoint}", "train.rdzv_timeout=300"]
    overrides = lora_overrides(
        tiny_model_dir, colors, "mlflow://tiny-nodes", output_dir, "train.launcher=torchrun", *node_options
    )
    second: list[subprocess.CompletedProcess] = []

    def node_one() -> None:  # the other machine: joins once node 0's train step wrote the job
        deadline = time.monotonic() + 600
        while not job_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        command = [sys.executable, "-m", "tasks.training.launcher", str(job_file), "--node-rank", "1"]
        second.append(subprocess.run(command, capture_output=True, text=True, timeout=600))

    joiner = threading.Thread(target=node_one)
    joiner.start()
    run = lora_finetune(overrides=overrides)
    joiner.join()
    assert second[0].returncode == 0, second[0].stdout[-3000:] + second[0].stderr[-3000:]
    assert "[default0]" in second[0].stderr + second[0].stdout  # node 1's own rank streamed its log
    assert run.train.steps == STEPS and run.publication.verified


def test_dpo_under_torchrun_gathers_its_evaluation_over_ranks(prefect_harness, tiny_model_dir, tmp_path):
    from flows.dpo_finetune import dpo_finetune

    train = write_jsonl(tmp_path / "prefs.jsonl", [hh_pair(i, POLITE, RUDE) for i in range(40)])
    published = tmp_path / "published"
    overrides = [
        *dpo_overrides(tiny_model_dir, tmp_path, train, published),
        "train.launcher=torchrun",
        "train.nproc_per_node=2",
        "train.batch_size=2",
        "eval.batch_size=3",  # 10 held-out pairs: uneven shards, the repeats must not count
    ]
    run = dpo_finetune(config="configs/dpo_demo.yaml", overrides=overrides)
    assert run.evaluation.untrained["pairs"] == 10 and run.evaluation.trained["pairs"] == 10
    assert run.evaluation.untrained["rewards/accuracies"] == 0.5
    assert run.evaluation.trained["rewards/accuracies"] > 0.9
    assert run.gate.passed and run.publication.verified
    assert (published / "adapter_model.safetensors").is_file()
