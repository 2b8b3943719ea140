"""The deployment path through the real local stack: Prefect server, process worker, MLflow server.

`deployments/stack.sh start` in a temporary data folder on free ports, `prefect deploy --all` from
prefect.yaml, then `prefect deployment run lora-finetune/lora-finetune` runs to Completed, and
`prefect deployment run dpo-finetune/dpo-finetune` trains on top of the adapter it published
(SFT then DPO through the stack); both runs land in the stack's MLflow server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.training import test_dpo_flow
from tests.training.test_lora_flow import tiny_overrides, write_tiny_dataset

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")


def run(args: list[str], env: dict, timeout: float = 300) -> str:
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done.stdout


@pytest.mark.slow
def test_every_flow_deploys_and_both_training_flows_run_to_completed(local_stack, tiny_model_dir, tmp_path):
    env = local_stack
    out = run([PREFECT, "--no-prompt", "deploy", "--all"], env)
    listed = run([PREFECT, "deployment", "ls"], {**env, "COLUMNS": "300"})  # wide enough for every name
    for name in (
        "lora-finetune/lora-finetune",
        "dpo-finetune/dpo-finetune",
        "pdf-index/pdf-index",
        "pdf-index/nightly-reindex",
        "feedback-export/nightly-feedback-export",
        "rag-query/rag-query",
        "rag-eval/rag-eval",
        "chat-app/chat-app",
        "export-gguf/export-gguf",
    ):
        assert name in listed, f"{name} missing from:\n{listed}\n{out}"
    schedule = run([PREFECT, "deployment", "inspect", "pdf-index/nightly-reindex"], env)
    assert "0 2 * * *" in schedule

    data_file = write_tiny_dataset(tmp_path / "colors.jsonl")
    overrides = tiny_overrides(tiny_model_dir, data_file, "mlflow://deployed-tiny-lora", steps=10)
    params = ["--param", f"overrides={json.dumps(overrides)}"]
    out = run(
        [PREFECT, "deployment", "run", "lora-finetune/lora-finetune", *params, "--watch", "--watch-timeout", "600"],
        env,
        timeout=660,
    )
    assert "Completed" in out, out

    # The run was tracked by the stack's MLflow server, with the conventions.
    tags = _last_run_tags(env, "lora-finetune")
    assert tags["verify.status"] == "passed" and tags["publish.uri"] == "mlflow://deployed-tiny-lora/1"
    assert tags["prefect.flow_run_id"]

    # DPO on top of that published SFT adapter, fetched back from the stack's registry by the worker.
    prefs = test_dpo_flow.write_jsonl(
        tmp_path / "prefs.jsonl",
        [test_dpo_flow.hh_pair(i, test_dpo_flow.POLITE, test_dpo_flow.RUDE) for i in range(32)],
    )
    overrides = test_dpo_flow.tiny_overrides(tiny_model_dir, tmp_path, prefs, tmp_path / "unused") + [
        "publish.uri=mlflow://deployed-tiny-dpo",
        "init_adapter=mlflow://deployed-tiny-lora/1",
    ]
    out = run(
        [
            PREFECT,
            "deployment",
            "run",
            "dpo-finetune/dpo-finetune",
            "--param",
            f"overrides={json.dumps(overrides)}",
            "--watch",
            "--watch-timeout",
            "600",
        ],
        env,
        timeout=660,
    )
    assert "Completed" in out, out
    tags = _last_run_tags(env, "dpo-finetune")
    assert tags["init_adapter"] == "mlflow://deployed-tiny-lora/1"
    assert (tags["gate.status"], tags["verify.status"]) == ("passed", "passed")
    assert tags["publish.uri"] == "mlflow://deployed-tiny-dpo/1"


def _last_run_tags(env: dict, experiment: str) -> dict[str, str]:
    url = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}"
    experiment_id = json.loads(urllib.request.urlopen(url, timeout=30).read())["experiment"]["experiment_id"]
    query = json.dumps(
        {"experiment_ids": [experiment_id], "max_results": 1, "order_by": ["attributes.start_time DESC"]}
    ).encode()
    request = urllib.request.Request(
        f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/runs/search",
        data=query,
        headers={"Content-Type": "application/json"},
    )
    run_info = json.loads(urllib.request.urlopen(request, timeout=30).read())["runs"][0]
    return {t["key"]: t["value"] for t in run_info["data"]["tags"]}
