"""What the fault-injection tests share: a real Prefect server for flow subprocesses, running a flow
as a child process (to SIGKILL it), and reading a child's MLflow store.

Flows run as separate processes so that a SIGKILL is a real crash; they all talk to one Prefect
server started here (127.0.0.1, its own SQLite database), which saves each child the ~10 s of an
ephemeral server and lets the tests read flow-run states as the UI shows them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def child_env(prefect_env: dict[str, str], data_dir: Path, **extra: str) -> dict[str, str]:
    """A flow subprocess's environment: its own FTLLM_DATA_DIR (MLflow store, checkpoints), one thread."""
    env = {
        **os.environ,
        **prefect_env,
        "FTLLM_DATA_DIR": str(data_dir),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def start_flow(module: str, args: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen:
    """`python -m flows.<module> ARGS` in its own process group (so a SIGKILL takes all of it)."""
    with open(log_file, "wb") as handle:  # the child keeps its own copy of the file descriptor
        return subprocess.Popen(
            [sys.executable, "-m", f"flows.{module}", *args],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run_flow(module: str, args: list[str], env: dict[str, str], log_file: Path, timeout: float = 240) -> int:
    process = start_flow(module, args, env, log_file)
    try:
        return process.wait(timeout)
    finally:
        kill_group(process)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started: no cleanup handlers run, as in a real crash."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(30)


def mlflow_runs(data_dir: Path, experiment: str) -> list:
    """Every run of `experiment` in a child's embedded MLflow store, oldest first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{data_dir / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])
    return list(runs)


def metric_history(data_dir: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{data_dir / 'mlflow.db'}")
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
