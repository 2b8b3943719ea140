"""Training state on shared services: MLflow on a tracking server (PostgreSQL backend, S3 artifacts)
and checkpoints on S3 (moto in server mode), so that a run killed on one machine resumes on another.

"Another machine" is a fresh FTLLM_DATA_DIR: nothing of the first run is left on local disk.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.support.processes import child_env, kill_group, run_flow, start_flow, wait_for
from tests.training.test_faults_training import MAX_STEPS, lora_setup

pytestmark = pytest.mark.timeout(600)


def s3_keys(s3_env: dict[str, str], prefix: str) -> list[str]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL"],
        region_name=s3_env["AWS_DEFAULT_REGION"],
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="ftllm", Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def uploaded_steps(s3_env: dict[str, str]) -> list[int]:
    """Steps of the checkpoints whose upload completed (the marker is written last)."""
    return sorted(
        int(key.split("/")[-2].split("-")[-1]) for key in s3_keys(s3_env, "checkpoints/") if key.endswith("/UPLOADED")
    )


@pytest.mark.slow
def test_a_killed_lora_finetune_resumes_from_s3_on_a_fresh_machine(
    prefect_server, mlflow_server, s3_server, tiny_model_dir, tmp_path
):
    from mlflow import MlflowClient

    module, flow, config, _, overrides = lora_setup(tiny_model_dir, tmp_path)
    argv = ["--config", config, *[f"--set={o}" for o in [*overrides, "train.checkpoint_uri=s3://ftllm/checkpoints"]]]
    services = {**s3_server, "MLFLOW_TRACKING_URI": mlflow_server}

    process = start_flow(
        module, argv, child_env(prefect_server, tmp_path / "first", **services), tmp_path / "killed.log"
    )
    try:
        wait_for(lambda: uploaded_steps(s3_server) or process.poll() is not None, 300, "a checkpoint on S3")
        assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        kill_group(process)
    at_kill = uploaded_steps(s3_server)
    assert at_kill and at_kill[-1] < MAX_STEPS, at_kill

    fresh = child_env(prefect_server, tmp_path / "second", **services)
    assert run_flow(module, argv, fresh, tmp_path / "rerun.log", timeout=400) == 0, (
        tmp_path / "rerun.log"
    ).read_text()[-4000:]
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name(flow)
    killed, rerun = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert killed.info.status == "RUNNING" and rerun.info.status == "FINISHED"
    assert rerun.data.tags["train.resumed_from_step"] == str(at_kill[-1])  # from S3: the second folder was empty
    assert client.get_metric_history(rerun.info.run_id, "train_loss")[-1].step == MAX_STEPS
    artifacts = s3_keys(s3_server, "mlflow/")
    assert any(rerun.info.run_id in key for key in artifacts), artifacts[:20]  # MLflow's artifacts live in S3
    assert not list((tmp_path / "second").rglob("mlflow.db"))  # and its runs in PostgreSQL, not a local file
