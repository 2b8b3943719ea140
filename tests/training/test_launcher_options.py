"""Launcher options that cannot work are refused before anything starts, naming the key."""

from __future__ import annotations

import re
import socket
import time

import pytest

from tasks.core.config import ConfigError, load_config
from tasks.core.models import Placement
from tasks.training.config import LoraFinetuneConfig


def config(*overrides: str) -> LoraFinetuneConfig:
    return load_config(LoraFinetuneConfig, "configs/lora_demo.yaml", list(overrides))


@pytest.mark.parametrize(
    ("overrides", "key", "reason"),
    [
        (["train.launcher=torchrun", "train.strategy=fsdp"], "train.strategy", "needs more than one"),
        (["train.launcher=torchrun", "train.nnodes=2"], "train.rdzv_endpoint", "must be HOST:PORT of node 0"),
        (
            ["train.launcher=torchrun", "train.nnodes=2", "train.rdzv_endpoint=node0"],
            "train.rdzv_endpoint",
            "HOST:PORT",
        ),
        (["train.launcher=torchrun", "train.node_rank=1"], "train.node_rank", "must be in [0, train.nnodes=1)"),
        (["train.nproc_per_node=2"], "train.launcher", "set train.launcher=torchrun"),
        (["train.launcher=torchrun", "train.nproc_per_node=0"], "train.nproc_per_node", "must be positive"),
    ],
)
def test_options_that_do_not_fit_are_refused_naming_the_key(overrides, key, reason):
    with pytest.raises(ConfigError, match=re.escape(key)) as refused:
        config(*overrides)
    assert reason in str(refused.value)


def test_more_processes_than_devices_is_refused_before_anything_starts():
    from tasks.training.launcher import check_devices

    cfg = config("train.launcher=torchrun", "train.nproc_per_node=100000")
    with pytest.raises(ConfigError, match=r"train.nproc_per_node: 100000 processes, but this machine has \d+ CPU"):
        check_devices(cfg.train, Placement("cpu", "fp32"))
    check_devices(config("train.launcher=torchrun", "train.nproc_per_node=1").train, Placement("cpu", "fp32"))


def test_the_flow_refuses_too_many_processes_before_any_step(prefect_harness, tiny_model_dir, tmp_path):
    from flows.lora_finetune import lora_finetune

    overrides = [f"model.name={tiny_model_dir}", "train.launcher=torchrun", "train.nproc_per_node=100000"]
    state = lora_finetune(overrides=overrides, return_state=True)
    assert state.is_failed() and "train.nproc_per_node: 100000 processes" in state.message


def test_torchrun_command_is_torchruns_own():
    from pathlib import Path

    from tasks.training.launcher import torchrun_command

    single = torchrun_command(config("train.launcher=torchrun", "train.nproc_per_node=2").train, Path("/j/job.json"))
    assert single[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in single
    assert single[-3:] == ["-m", "tasks.training.distributed_entry", "/j/job.json"]
    multi = torchrun_command(
        config("train.launcher=torchrun", "train.nnodes=2", "train.node_rank=1", "train.rdzv_endpoint=h:29400").train,
        Path("/j/job.json"),
    )
    assert {"--nnodes=2", "--node-rank=1", "--rdzv-backend=c10d", "--rdzv-endpoint=h:29400"} <= set(multi)


@pytest.mark.slow
def test_a_node_that_cannot_reach_the_rendezvous_times_out_naming_the_endpoint(tmp_path):
    from tasks.training.launcher import DistributedJob, DistributedTrainingError, run_torchrun, write_job

    with socket.socket() as probe:  # a port nobody listens on: node 0 never comes
        probe.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{probe.getsockname()[1]}"
    cfg = config(
        "train.launcher=torchrun",
        "train.nnodes=2",
        "train.node_rank=1",
        f"train.rdzv_endpoint={endpoint}",
        "train.rdzv_timeout=5",
    )
    job_file = write_job(DistributedJob("lora-finetune", "none", str(tmp_path / "c"), str(tmp_path / "j"), [], []), cfg)
    started = time.monotonic()
    with pytest.raises(DistributedTrainingError) as failed:
        run_torchrun(cfg.train, job_file)
    assert f"train.rdzv_endpoint={endpoint}" in str(failed.value) and "train.rdzv_timeout=5s" in str(failed.value)
    assert time.monotonic() - started < 120
    assert not (tmp_path / "j" / "result.json").exists()


# torchrun's own report, as it printed it here when a test SIGKILLed rank 1 of 2 mid-run.
KILLED_REPORT = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
tasks.training.distributed_entry FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-01_04:58:46
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 4662)
  error_file: <N/A>
  traceback : Traceback (most recent call last):
    RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:51924: Connection reset by peer.
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_04:58:46
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 4663)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 4663
============================================================"""


def test_the_failure_names_the_root_cause_rank_not_the_one_torchrun_stopped():
    from tasks.training.launcher import failure_message

    options = config("train.launcher=torchrun", "train.nproc_per_node=2").train
    message = failure_message(options, 1, KILLED_REPORT.splitlines())
    assert message == "rank 1 failed with exit code -9: Signal 9 (SIGKILL) received by PID 4663"
    raised = KILLED_REPORT.replace(
        "  traceback : Signal 9 (SIGKILL) received by PID 4663",
        '  traceback : Traceback (most recent call last):\n    File "x.py", line 1, in <module>\n    ValueError: boom',
    )
    assert failure_message(options, 1, raised.splitlines()).endswith(
        "rank 1 failed with exit code -9: ValueError: boom"
    )
