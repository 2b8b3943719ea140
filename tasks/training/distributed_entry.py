"""What torchrun runs on every rank: `python -m tasks.training.distributed_entry JOB_FILE`.

Every rank loads the base model, adds the same LoRA adapter and trains its share of each global
batch; the Trainer (through accelerate) sets up the process group and wraps the model in DDP or
FSDP. Only rank 0 logs to the flow's MLflow run and writes `result.json`; the adapter is saved by
the Trainer, which gathers FSDP shards first. DPO scores its held-out pairs on every rank and
gathers them (`dpo.score_pairs`), so the metrics cover every pair once.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import record

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from tasks.core import models, tracking
from tasks.core.config import load_config
from tasks.training import dpo, lora, sft
from tasks.training.config import DpoFinetuneConfig, LoraFinetuneConfig
from tasks.training.launcher import ADAPTER_DIR, CONFIG_FILE, RESULT_FILE, DistributedJob, read_job

CONFIGS: dict[str, type] = {"lora-finetune": LoraFinetuneConfig, "dpo-finetune": DpoFinetuneConfig}


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def rank_zero_tracking(run_id: str):
    """Rank 0 logs into the flow's MLflow run; the other ranks have no run, so they log nothing.

    An empty run id (the benchmark) tracks nothing.
    """
    if not is_rank_zero() or not run_id:
        yield
        return
    import mlflow

    tracking.configure()
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        # Leave the run as it is: the flow still logs into it and decides how it ends.
        mlflow.tracking.fluent._active_run_stack.get().clear()


def _evaluation(evaluation: dpo.Evaluation) -> dict[str, Any]:
    return {
        "metrics": evaluation.metrics,
        "reference": {
            "chosen": evaluation.reference.chosen.tolist(),
            "rejected": evaluation.reference.rejected.tolist(),
        },
        "policy": {"chosen": evaluation.policy.chosen.tolist(), "rejected": evaluation.policy.rejected.tolist()},
    }


def train_lora(job: DistributedJob, cfg: LoraFinetuneConfig, placement: models.Placement):
    model, tokenizer, _ = models.load_base_model(
        cfg.model.name, placement, cfg.model.revision, cfg.model.trust_remote_code
    )
    model, _ = lora.apply_fresh_lora(model, cfg.lora, cfg.train, placement)
    trainer, result, tokens = sft.train_with_trainer(
        model, tokenizer, job.train_rows, cfg, placement, Path(job.output_dir)
    )
    return trainer, {"train": asdict(result), "tokens": asdict(tokens)}


def train_dpo(job: DistributedJob, cfg: DpoFinetuneConfig, placement: models.Placement):
    model, tokenizer, _ = models.load_base_model(
        cfg.model.name, placement, cfg.model.revision, cfg.model.trust_remote_code
    )
    model, _ = lora.start_policy(model, cfg, placement, os.environ.get("HF_TOKEN"))
    output_dir = Path(job.output_dir)
    trainer = dpo.build_trainer(model, tokenizer, job.train_rows, job.eval_rows, cfg, placement, output_dir)
    base = dpo.evaluate_untrained(trainer, cfg.dpo.beta)
    result = dpo.train_dpo(trainer, output_dir, cfg.train.resume)
    trained = dpo.evaluate_trained(trainer, cfg.dpo.beta, base.reference)
    return trainer, {"train": asdict(result), "base": _evaluation(base), "trained": _evaluation(trained)}


TRAINERS = {"lora-finetune": train_lora, "dpo-finetune": train_dpo}


@record  # torchrun's failure report then carries this rank's traceback
def main(argv: list[str] | None = None) -> int:
    job = read_job((argv or sys.argv[1:])[0])
    job_dir = Path(job.job_dir)
    cfg = load_config(CONFIGS[job.flow], job_dir / CONFIG_FILE)
    placement = models.resolve_placement(cfg.train.device, cfg.train.precision)
    with rank_zero_tracking(job.run_id):
        trainer, result = TRAINERS[job.flow](job, cfg, placement)
        trainer.save_model(str(job_dir / ADAPTER_DIR))  # every rank: FSDP gathers the shards for rank 0
    if is_rank_zero():
        # Written last: its presence says the adapter beside it is complete.
        (job_dir / RESULT_FILE).write_text(json.dumps(result))
    import torch.distributed as dist

    if dist.is_initialized():
        # Gloo's worker threads free a finished collective's tensors under the GIL, while
        # destroy_process_group joins those threads holding it: with a free still pending the rank
        # hangs at exit. The barrier waits out every earlier collective with the GIL released, and
        # the pause lets a worker that just finished one take the GIL and free it.
        dist.barrier()
        time.sleep(0.2)
        dist.destroy_process_group()  # a clean exit: torchrun then sees every rank end at once
    return 0


if __name__ == "__main__":
    sys.exit(main())
