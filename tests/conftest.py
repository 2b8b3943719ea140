"""Shared fixtures: an isolated data folder per test session, a tiny model, single-threaded torch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Torch with 2 threads runs 5-10x slower than with 1 when other processes load the 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import logging

import tasks  # noqa: F401  (switches telemetry off before the libraries load)

# Prefect re-creates its console log handler when a flow starts; one created inside a test keeps
# that test's captured stream after it is closed, and logging would then dump an error (with the
# exception being handled at the time) for every later record. In tests that is noise only.
logging.raiseExceptions = False

pytest_plugins = [
    "tests.fixtures.chat",
    "tests.fixtures.llamacpp",
    "tests.fixtures.ollama",
    "tests.fixtures.processes",
    "tests.fixtures.services",
]


@pytest.fixture(scope="session", autouse=True)
def isolated_data_dir(tmp_path_factory):
    """Every test session keeps its MLflow store, caches and indexes in a fresh folder."""
    folder = tmp_path_factory.mktemp("ftllm-data")
    previous = {k: os.environ.get(k) for k in ("FTLLM_DATA_DIR", "MLFLOW_TRACKING_URI")}
    os.environ["FTLLM_DATA_DIR"] = str(folder)
    # Converted models are the one thing worth keeping between test sessions (SmolLM2: ~30 s).
    os.environ.setdefault("FTLLM_MODEL_CACHE", str(Path(__file__).resolve().parents[1] / ".ftllm" / "models"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import torch

    torch.set_num_threads(1)
    yield folder
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def mlflow_globals_restored():
    """mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI and set_experiment() keeps a process-wide
    experiment id: a test that sets either must not hand its store or experiment to the tests after it."""
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    yield
    if "mlflow" not in sys.modules:
        return
    import mlflow
    import mlflow.tracking.fluent as fluent

    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(before["MLFLOW_TRACKING_URI"])
    fluent._active_experiment_id = None
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tests.support.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen2")


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """tests/data/ plus the generated bad PDFs, in a folder the tests may read and copy from."""
    from tests.support.sample_data import build_sample_data

    return build_sample_data(tmp_path_factory.mktemp("sample") / "data")


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for every test that runs a flow in-process."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):  # 30 s default: too short on a loaded machine
        yield


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """The project's local stack (deployments/stack.sh) on free ports in a fresh data folder.

    Yields the environment a user gets from `eval "$(bash deployments/stack.sh env)"`.
    """
    import socket
    import subprocess

    def free_port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    root = Path(__file__).resolve().parents[1]
    data = tmp_path_factory.mktemp("stack")
    env = {
        **os.environ,
        "FTLLM_DATA_DIR": str(data),
        "FTLLM_PREFECT_PORT": str(free_port()),
        "FTLLM_MLFLOW_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)

    def stack(command: str, timeout: float) -> str:
        done = subprocess.run(
            ["bash", "deployments/stack.sh", command],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"stack.sh {command} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    try:
        stack("start", 300)
        for line in stack("env", 30).splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value.strip('"')
        yield env
    finally:
        subprocess.run(["bash", "deployments/stack.sh", "stop"], cwd=root, env=env, capture_output=True, timeout=180)
