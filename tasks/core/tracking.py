"""The MLflow conventions every flow follows (dashboards and checks rely on them).

- Tracking URI: `MLFLOW_TRACKING_URI` when set, else an embedded SQLite store in FTLLM_DATA_DIR
  (`mlflow.db`, artifacts under `mlartifacts/`).
- One experiment per flow, named after the flow. Params: the flattened config.
- Tags: `prefect.flow_run_id`, `git.commit`, plus what each flow adds (`dataset.fingerprint`,
  `publish.uri`, `verify.status`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.core.config import PROJECT_ROOT, data_dir, flatten, to_yaml

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached: raised before any work starts."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{data_dir() / 'mlflow.db'}"


def artifact_root() -> str | None:
    """Where new experiments keep artifacts; only set for a local store (a server has its own)."""
    # Not "is MLFLOW_TRACKING_URI set": mlflow.set_tracking_uri() exports it, so every experiment
    # created after configure() fell back to ./mlruns in the working directory, outside FTLLM_DATA_DIR.
    if tracking_uri().startswith(("http://", "https://")):
        return None
    return (data_dir() / "mlartifacts").as_uri()


def check_tracking_reachable(timeout: float = 5.0) -> str:
    """Fail fast, with a clear message, when a tracking server is configured but down."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                response.read()
        except (urllib.error.URLError, OSError) as error:
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} is unreachable ({getattr(error, 'reason', error)}); start it "
                f"(bash deployments/stack.sh start) or unset MLFLOW_TRACKING_URI to use the embedded store"
            ) from None
    return uri


def configure() -> str:
    import mlflow

    uri = check_tracking_reachable()
    mlflow.set_tracking_uri(uri)
    return uri


def use_experiment(name: str) -> str:
    """Select (creating if needed) the experiment; returns its id."""
    import mlflow

    configure()
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        mlflow.create_experiment(name, artifact_location=artifact_root())
    # Also after creating it: create_experiment alone leaves the next run in the "Default" experiment.
    return mlflow.set_experiment(name).experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def prefect_flow_run_id() -> str | None:
    try:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        return str(context.flow_run.id) if context and context.flow_run else None
    except Exception:  # outside Prefect (plain function calls in tests)
        return None


def params_of(config: Any) -> dict[str, str]:
    """The flattened config as MLflow params (and model cards) show it."""
    return {key: str(value)[:MAX_PARAM_CHARS] for key, value in flatten(config).items()}


@contextlib.contextmanager
def start_run(
    experiment: str, config: Any | None = None, run_name: str | None = None, tags: dict[str, str] | None = None
) -> Iterator[Any]:
    """An MLflow run with the project's params and tags; the resolved config logged as an artifact."""
    import mlflow

    use_experiment(experiment)
    all_tags = {"git.commit": git_commit()}
    if flow_run_id := prefect_flow_run_id():
        all_tags["prefect.flow_run_id"] = flow_run_id
    all_tags.update(tags or {})
    with mlflow.start_run(run_name=run_name, tags=all_tags) as run:
        if config is not None:
            mlflow.log_params(params_of(config))
            mlflow.log_text(to_yaml(config), "config.yaml")
        yield run


def run_link(run: Any) -> str:
    """Where to look at a run: the server's UI page, or how to open the embedded store."""
    uri = tracking_uri()
    experiment_id, run_id = run.info.experiment_id, run.info.run_id
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"run {run_id} (mlflow ui --backend-store-uri {uri})"


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step)


def set_tags(tags: dict[str, str]) -> None:
    import mlflow

    mlflow.set_tags(tags)


def log_artifacts(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifacts(str(path), artifact_path)
