"""The torchrun launcher against the in-process train step, side by side in one run.

    OMP_NUM_THREADS=1 python -m benchmarks.train_distributed                 # CPU: the demo, gloo
    python -m benchmarks.train_distributed --device cuda --setups inprocess,torchrun-1 \\
        --generated /tmp/launcher-check --shape qwen2.5-1.5b --out $OUT       # GPU (gpu_check.sh)

Setups, each on the same config (the LoRA demo: SmolLM2-135M on the chatterbot corpus unless
--set says otherwise), the same rows and the same global batch:

- inprocess: `train.launcher=local`, the baseline: the flow's own process trains;
- torchrun-1: torchrun with one process (what the launcher itself costs: start-up, loading, saving);
- torchrun-2: torchrun with two processes, DDP over gloo (CPU) or NCCL (GPU), half the batch each.

Wall time is the whole train step (torchrun start, every rank loading the model, training, saving
the adapter); tokens/s is the Trainer's own count over its training window (every rank's tokens).
On a 2-core CPU two processes compete for the same cores: expect little gain; the point here is
that the launcher trains the same thing. Results: benchmarks/results/train_distributed_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import tasks  # noqa: F401
from tasks.core import models
from tasks.core.config import load_config
from tasks.training import data, launcher, lora, sft
from tasks.training.config import LoraFinetuneConfig

RESULTS = Path(__file__).resolve().parent / "results"
FLOW = "lora-finetune"
SETUPS = {
    "inprocess": ["train.launcher=local"],
    "torchrun-1": ["train.launcher=torchrun", "train.nproc_per_node=1"],
    "torchrun-2": ["train.launcher=torchrun", "train.nproc_per_node=2"],
}


def run_setup(name: str, base: list[str], global_batch: int, workdir: Path) -> dict:
    procs = 2 if name == "torchrun-2" else 1
    overrides = [
        *base,
        *SETUPS[name],
        f"train.batch_size={global_batch // procs}",
        f"train.output_dir={workdir / name}",
        "train.resume=false",
    ]
    cfg = load_config(LoraFinetuneConfig, "configs/lora_demo.yaml", overrides)
    rows = data.load_sft_data(cfg.data).train
    placement = models.resolve_placement(cfg.train.device, cfg.train.precision)
    start = time.perf_counter()
    if cfg.train.launcher == "local":
        model, tokenizer, _ = models.load_base_model(cfg.model.name, placement)
        model, _ = lora.apply_fresh_lora(model, cfg.lora, cfg.train, placement)
        result, _ = sft.train(model, tokenizer, rows, cfg, placement, Path(cfg.train.output_dir))
    else:
        result = launcher.train_result(launcher.train_distributed(FLOW, cfg, "", rows, []))
    wall = time.perf_counter() - start
    return {
        "setup": name,
        "processes": procs,
        "per_process_batch": global_batch // procs,
        "steps": result.steps,
        "wall_seconds": round(wall, 2),
        "train_seconds": round(result.seconds, 2),
        "tokens": result.tokens,
        "tokens_per_second": round(result.tokens_per_second, 1),
        "final_loss": result.final_loss,
    }


def generated_inputs(folder: Path, shape: str, device: str) -> list[str]:
    """A saved random model of `shape` (the tests' tiny model for `tiny-qwen2`) and generated rows: no download."""
    import torch

    from tests.support.tiny_model import build_tiny_model
    from tests.training.test_lora_flow import write_tiny_dataset

    folder.mkdir(parents=True, exist_ok=True)
    model_dir = build_tiny_model(folder / "model")
    if shape != "tiny-qwen2":
        from transformers import AutoConfig, AutoModelForCausalLM

        from benchmarks.train_throughput import SHAPES

        values = dict(SHAPES[shape])
        config = AutoConfig.for_model(values.pop("model_type"), **values)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        with torch.device(device):
            AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(model_dir)
    rows = write_tiny_dataset(folder / "rows.jsonl", n=2000)
    return [f"model.name={model_dir}", f"data.train={rows}", "data.max_eval_rows=8"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated, from: " + ", ".join(SETUPS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    parser.add_argument("--generated", type=Path, help="build a random model and rows here instead of the demo's")
    parser.add_argument(
        "--shape", default="tiny-qwen2", help="with --generated: tiny-qwen2 or a train_throughput shape"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the result files")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    base = [f"train.max_steps={args.steps}", f"train.device={args.device}", "train.logging_steps=1", *args.set]
    if args.generated:
        base += generated_inputs(args.generated, args.shape, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("FTLLM_DATA_DIR", tmp)
        rows = [run_setup(name, base, args.global_batch, Path(tmp)) for name in args.setups.split(",")]
    baseline = rows[0]
    for row in rows:
        row["speedup_vs_" + baseline["setup"]] = round(row["tokens_per_second"] / baseline["tokens_per_second"], 2)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report = {
        "benchmark": "train_distributed",
        "device": args.device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_start": [round(x, 2) for x in load],
        "uptime_at_end": uptime,
        "overrides": base,
        "global_batch": args.global_batch,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"train_distributed_{args.device}"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    header = "| setup | processes | batch/process | steps | wall s | train s | tokens/s | vs baseline | final loss |"
    lines = [
        f"# {name}",
        "",
        f"Config: configs/lora_demo.yaml {' '.join(base)}; global batch {args.global_batch}.",
        f"Machine: {report['machine']}; load average at start {report['load_average_at_start']}; at end: {uptime}.",
        "",
        header,
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['setup']} | {r['processes']} | {r['per_process_batch']} | {r['steps']} | {r['wall_seconds']} | "
            f"{r['train_seconds']} | {r['tokens_per_second']} | {r['speedup_vs_' + baseline['setup']]}x | "
            f"{r['final_loss']:.4f} |"
            for r in rows
        ),
        "",
    ]
    (args.out / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
