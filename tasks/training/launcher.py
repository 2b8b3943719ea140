"""`train.launcher: torchrun`: the train step starts torchrun on `tasks.training.distributed_entry`.

torchrun (PyTorch's own launcher) starts one process per device, runs the rendezvous between
machines and watches the processes; we only write the job file every rank reads, stream every
rank's output into the step's log, and turn torchrun's failure report into an error that names the
failing rank. Rank 0 writes the adapter and `result.json` into the job folder; the flow reloads the
adapter from there, so nothing is published when any rank failed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.core import tracking
from tasks.core.config import ConfigError, to_yaml
from tasks.core.models import Placement
from tasks.training import checkpoints
from tasks.training.config import TrainOptions
from tasks.training.data import TokenSummary
from tasks.training.dpo import Evaluation, PairLogps
from tasks.training.trainer import TrainResult

ENTRY_MODULE = "tasks.training.distributed_entry"
JOB_FILE = "job.json"
CONFIG_FILE = "config.yaml"
RESULT_FILE = "result.json"
ADAPTER_DIR = "adapter"

log = logging.getLogger(__name__)

# Every rank's lines go into the step's log: progress bars there would be one line per redraw.
CHILD_ENV = {"TQDM_DISABLE": "1"}
NPROC_ENV = "NPROC_PER_NODE"


class DistributedTrainingError(RuntimeError):
    """A rank failed, or a machine never reached the rendezvous: nothing was trained to publish."""


@dataclass
class DistributedJob:
    """What every rank reads: the flow, its config, the rows the flow loaded, the MLflow run rank 0 logs to."""

    flow: str
    run_id: str
    output_dir: str  # checkpoints, as for the local launcher
    job_dir: str  # the job file, the config, rank 0's result and adapter
    train_rows: list[dict]
    eval_rows: list[dict]


def from_environment(options: TrainOptions) -> TrainOptions:
    """`NPROC_PER_NODE`, set by the cluster job templates from the job's GPUs, overrides train.nproc_per_node."""
    import dataclasses

    value = os.environ.get(NPROC_ENV, "").strip()
    if options.launcher != "torchrun" or not value:
        return options
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{NPROC_ENV}={value!r}: must be a positive integer (it sets train.nproc_per_node)")
    return dataclasses.replace(options, nproc_per_node=int(value))


def check_devices(options: TrainOptions, placement: Placement) -> None:
    """More processes on this machine than it has devices is refused before anything starts."""
    if options.launcher != "torchrun":
        return
    options = from_environment(options)
    if placement.device == "cuda":
        import torch

        devices, kind = torch.cuda.device_count(), "CUDA devices"
    else:
        devices, kind = os.cpu_count() or 1, "CPU cores"
    if options.nproc_per_node > devices:
        raise ConfigError(
            f"train.nproc_per_node: {options.nproc_per_node} processes, but this machine has {devices} {kind}"
        )


def torchrun_command(options: TrainOptions, job_file: Path) -> list[str]:
    """torchrun's own command line for these options (a standalone rendezvous on one machine)."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={options.nproc_per_node}"]
    if options.nnodes == 1 and not options.rdzv_endpoint:
        command.append("--standalone")
    else:
        command += [
            f"--nnodes={options.nnodes}",
            f"--node-rank={options.node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={options.rdzv_endpoint}",
            f"--rdzv-id={job_file.parent.name}",
            f"--rdzv-conf=join_timeout={options.rdzv_timeout},read_timeout={options.rdzv_timeout}",
        ]
    # No restarts: a failed rank fails the step, and the rerun resumes from the last checkpoint.
    command += ["--max-restarts=0", "--tee=3", "-m", ENTRY_MODULE, str(job_file)]
    return command


def write_job(job: DistributedJob, cfg: Any) -> Path:
    folder = Path(job.job_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT_FILE, ADAPTER_DIR):  # a result left by an earlier run must never be taken for this one
        path = folder / stale
        if path.is_dir():
            import shutil

            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    (folder / CONFIG_FILE).write_text(to_yaml(cfg))
    job_file = folder / JOB_FILE
    job_file.write_text(json.dumps(asdict(job)))
    return job_file


def read_job(job_file: str | Path) -> DistributedJob:
    return DistributedJob(**json.loads(Path(job_file).read_text()))


# torchrun's failure report names the first rank that failed under "Root Cause (first observed
# failure):" ("  rank      : 1 (local_rank: 1)", "  exitcode  : -9 (pid: 123)", "  traceback : Signal 9
# (SIGKILL) received by PID 123", or the rank's own traceback up to a line of "=").
_ROOT_CAUSE = "Root Cause (first observed failure)"
_FAILED_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_EXITCODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
_TRACEBACK = re.compile(r"^\s*traceback\s*:\s*(.*)")
_RDZV_FAILURE = re.compile(r"Rendezvous(Timeout|Connection|Closed)?Error|DistStoreError|rendezvous", re.IGNORECASE)


def failure_message(options: TrainOptions, returncode: int, output: list[str]) -> str:
    """The failing rank, its exit code and its error, from torchrun's report (or the rendezvous that failed)."""
    marks = [i for i, line in enumerate(output) if _ROOT_CAUSE in line]
    report = output[marks[-1] :] if marks else []
    ranks = [m.group(1) for line in report if (m := _FAILED_RANK.match(line))]
    if ranks:
        codes = [m.group(1) for line in report if (m := _EXITCODE.match(line))]
        code = f" with exit code {codes[0]}" if codes else ""
        return f"rank {ranks[0]} failed{code}: {_root_cause(report)}"
    if options.rdzv_endpoint and any(_RDZV_FAILURE.search(line) for line in output):
        return (
            f"node {options.node_rank} did not complete the rendezvous at train.rdzv_endpoint="
            f"{options.rdzv_endpoint} within train.rdzv_timeout={options.rdzv_timeout}s: {_last_error(output)}"
        )
    return f"torchrun exited with code {returncode}: {_last_error(output)}"


def _root_cause(report: list[str]) -> str:
    """A signal's one line, or the last line of the rank's traceback (the exception and its message)."""
    for i, line in enumerate(report):
        if m := _TRACEBACK.match(line):
            body = [m.group(1), *report[i + 1 :]]
            body = body[: next((j for j, text in enumerate(body) if text.strip().startswith("===")), len(body))]
            lines = [text.strip() for text in body if text.strip()]
            if len(lines) == 1 or not lines[0].startswith("Traceback"):
                return lines[0] if lines else "no traceback"
            return lines[-1]
    return "no traceback"


def _last_error(output: list[str]) -> str:
    errors = [line.strip() for line in output if "Error" in line or "error" in line]
    return errors[-1] if errors else (output[-1].strip() if output else "no output")


def _step_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a flow run (the benchmark, a test calling the function)
        return log


def run_torchrun(options: TrainOptions, job_file: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Start torchrun, stream every rank's lines, and return rank 0's result (DistributedTrainingError on failure)."""
    logger = _step_logger()
    options = from_environment(options)
    command = torchrun_command(options, job_file)
    logger.info("starting %s", " ".join(command))
    tail: deque[str] = deque(maxlen=400)
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, **CHILD_ENV, "MLFLOW_TRACKING_URI": tracking.tracking_uri(), **(env or {})},
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            logger.info("%s", line)
        returncode = process.wait()
    if returncode != 0:
        raise DistributedTrainingError(failure_message(options, returncode, list(tail)))
    result_file = job_file.parent / RESULT_FILE
    if not result_file.is_file():  # a node other than 0 trains, but rank 0 reports (on its own machine)
        return {}
    return json.loads(result_file.read_text())


def train_distributed(
    flow: str, cfg: Any, run_id: str, train_rows: list[dict], eval_rows: list[dict], token: str | None = None
) -> dict[str, Any]:
    """Train under torchrun on the rows the flow loaded; rank 0's result (`distributed_entry` writes it)."""
    output_dir = checkpoints.checkpoint_dir(flow, cfg)
    job_dir = checkpoints.job_dir(output_dir)
    job = DistributedJob(flow, run_id, str(output_dir), str(job_dir), train_rows, eval_rows)
    job_file = write_job(job, cfg)
    return run_torchrun(cfg.train, job_file, {"HF_TOKEN": token} if token else {})


def train_result(result: dict[str, Any]) -> TrainResult:
    fields = dict(result["train"])
    fields["loss_history"] = [tuple(entry) for entry in fields["loss_history"]]
    return TrainResult(**fields)


def token_summary(result: dict[str, Any]) -> TokenSummary:
    return TokenSummary(**result["tokens"])


def evaluation(scored: dict[str, Any]) -> Evaluation:
    """A DPO evaluation as rank 0 reported it (the pairs of every rank, gathered)."""
    import torch

    def logps(side: dict[str, list[float]]) -> PairLogps:
        return PairLogps(torch.tensor(side["chosen"]), torch.tensor(side["rejected"]))

    return Evaluation(scored["metrics"], logps(scored["reference"]), logps(scored["policy"]))


def reload_trained(model, options: TrainOptions, result: TrainResult):
    """The steps after training take the adapter from the run's output (torchrun), or the trained model as is."""
    if options.launcher == "local":
        return model
    return load_trained_adapter(model, checkpoints.job_dir(result.output_dir))


def load_trained_adapter(model, job_dir: str | Path):
    """Load the adapter rank 0 wrote into the flow's LoRA model (the model the flow had, trained weights)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(job_dir) / ADAPTER_DIR
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise DistributedTrainingError(f"the distributed run wrote no adapter: {weights} is missing")
    outcome = set_peft_model_state_dict(model, load_file(str(weights)), adapter_name="default")
    missing = [key for key in outcome.unexpected_keys]
    if missing:
        raise DistributedTrainingError(f"adapter in {folder} does not fit the flow's model: unexpected {missing[:3]}")
    model.eval()
    return model


def join(job_file: str | Path, node_rank: int) -> None:
    """Start this machine's torchrun for a multi-node job node 0's flow wrote (on a shared volume)."""
    import dataclasses

    import yaml

    job_file = Path(job_file)
    tree = yaml.safe_load((job_file.parent / CONFIG_FILE).read_text())
    options = dataclasses.replace(TrainOptions(**tree["train"]), node_rank=node_rank)
    run_torchrun(options, job_file)


def main(argv: list[str] | None = None) -> int:
    """`python -m tasks.training.launcher JOB_FILE --node-rank N`: what every machine but node 0 runs."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("job_file", help="the job.json node 0's train step wrote (on a volume every node mounts)")
    parser.add_argument("--node-rank", type=int, required=True, help="this machine's number, 1 .. train.nnodes-1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        join(args.job_file, args.node_rank)
    except (DistributedTrainingError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
