"""Where a training run keeps its checkpoints: one folder per configuration, so a rerun resumes.

The folder is named after a hash of the options that change what is trained; rerunning a crashed
run with the same config finds its last checkpoint there (optimizer, scheduler, RNG and data
position included: the Trainer restores them all). Once the run has published its adapter, the
folder is removed and a rerun starts fresh.
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
