"""Where a training run keeps its checkpoints: one folder per configuration, so a rerun resumes.

The folder is named after a hash of the options that change what is trained; rerunning a crashed
run with the same config finds its last checkpoint there (optimizer, scheduler, RNG and data
position included: the Trainer restores them all). Once the run has published its adapter, the
folder is removed and a rerun starts fresh.

With `train.checkpoint_uri` (S3 or any fsspec URL) every checkpoint is also uploaded there, a
marker last; a run that finds no checkpoint on its own machine downloads the newest complete one,
so a run killed on one machine resumes on another.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from tasks.core.config import data_dir, flatten
from tasks.core.models import resolve_placement

# Options that never change what is trained: a rerun that differs only in these resumes.
RESUME_NEUTRAL = (
    "publish.",
    "eval.",
    "train.resume",
    "train.output_dir",
    "train.checkpoint_uri",
    "train.num_threads",
    "train.logging_steps",
    "train.save_steps",
    "train.save_total_limit",
    "data.max_eval_rows",
    # Where this machine sits in a multi-node run: every node must find the same folder.
    "train.node_rank",
    "train.rdzv_endpoint",
    "train.rdzv_timeout",
)


def checkpoint_dir(flow: str, config: Any) -> Path:
    """`train.output_dir`, or a folder named after the config's training-relevant options."""
    if config.train.output_dir:
        return Path(config.train.output_dir).expanduser().resolve()
    relevant = {k: v for k, v in flatten(config).items() if not k.startswith(RESUME_NEUTRAL)}
    # `auto` as this machine resolves it: a checkpoint written on the CPU in fp32 must not resume on
    # a GPU in bf16 (nor the other way round), and `auto` and its resolved value are the same run.
    placement = resolve_placement(config.train.device, config.train.precision)
    relevant.update({"train.device": placement.device, "train.precision": placement.precision})
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return data_dir() / "checkpoints" / flow / digest


def job_dir(output_dir: str | Path) -> Path:
    """Beside the checkpoints: a torchrun job's files, config, and rank 0's adapter and result.

    Not inside them: a fresh (non-resuming) run clears the checkpoint folder once the ranks started.
    """
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".job")


def last_checkpoint(output_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None


def remove_checkpoints(output_dir: str | Path) -> None:
    """After a run has published its adapter, its checkpoints are only disk: a rerun starts fresh."""
    shutil.rmtree(output_dir, ignore_errors=True)
    shutil.rmtree(job_dir(output_dir), ignore_errors=True)


UPLOADED = "UPLOADED"  # written after a checkpoint's files: without it, the upload was cut off


def remote_dir(output_dir: Path, checkpoint_uri: str) -> str:
    """The run's folder under `checkpoint_uri`: <flow>/<config hash>, as under FTLLM_DATA_DIR."""
    return f"{checkpoint_uri.rstrip('/')}/{output_dir.parent.name}/{output_dir.name}"


def _remote(output_dir: Path, checkpoint_uri: str):
    """(filesystem, path) of the run's remote folder; fails naming the URL when it cannot be reached."""
    import fsspec

    url = remote_dir(output_dir, checkpoint_uri)
    fs, path = fsspec.core.url_to_fs(url)
    try:
        fs.ls(path.split("/")[0])  # the bucket (or top folder) answers
    except Exception as error:  # each backend raises its own: name the URL whatever it was
        raise ConnectionError(
            f"train.checkpoint_uri: {checkpoint_uri} cannot be reached ({type(error).__name__}: {error})"
        ) from None
    return fs, path


def restore_checkpoint(output_dir: Path, checkpoint_uri: str) -> str | None:
    """The newest complete remote checkpoint, downloaded into `output_dir` when this machine has none."""
    fs, root = _remote(output_dir, checkpoint_uri)
    if last_checkpoint(output_dir):
        return None
    steps = sorted(
        int(marker.rsplit("/", 2)[-2].split("-")[-1]) for marker in fs.glob(f"{root}/checkpoint-*/{UPLOADED}")
    )
    if not steps:
        return None
    name = f"checkpoint-{steps[-1]}"
    for remote_file in fs.find(f"{root}/{name}"):
        relative = remote_file[len(f"{root}/{name}/") :]
        if relative != UPLOADED:
            (output_dir / name / relative).parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote_file, str(output_dir / name / relative))
    return str(output_dir / name)


def mirror_callback(output_dir: Path, checkpoint_uri: str, keep: int):
    """Uploads each checkpoint as the Trainer saves it (the main process only); keeps the newest `keep`."""
    from transformers import TrainerCallback

    fs, root = _remote(output_dir, checkpoint_uri)

    class MirrorCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            name = f"checkpoint-{state.global_step}"
            local = output_dir / name
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                fs.put_file(str(path), f"{root}/{name}/{path.relative_to(local).as_posix()}")
            fs.pipe_file(f"{root}/{name}/{UPLOADED}", b"")
            uploaded = sorted(
                int(marker.rsplit("/", 2)[-2].split("-")[-1]) for marker in fs.glob(f"{root}/checkpoint-*/{UPLOADED}")
            )
            for step in uploaded[:-keep]:
                fs.rm(f"{root}/checkpoint-{step}", recursive=True)

    return MirrorCheckpoints()
