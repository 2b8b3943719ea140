"""Training speed: the project's SFT step against the notebook-style baseline, side by side in one process.

    OMP_NUM_THREADS=1 python -m benchmarks.train_throughput          # the CPU demo: SmolLM2-135M, chatterbot
    python -m benchmarks.train_throughput --device cuda --shape qwen2.5-1.5b \\
        --lengths lognormal:160 --max-length 4096 --packed-batch-size 8 --steps 10 --json

Both setups are the project's own `training.sft_trainer` (TRL's SFTTrainer, LoRA from
`lora.freeze_and_apply_lora`), on the same model shape, LoRA config and rows:

- baseline ("notebook style"): rows padded to the longest in the batch, gradient checkpointing on,
  the loss over full logits, the model's default attention;
- project: the defaults of `TrainOptions` on that device (packed rows with position ids reset per
  row, no cross-row attention, checkpointing only when memory needs it, Liger kernels on CUDA);
- project-ckpt (GPU): the project with checkpointing forced on, the memory-saving mode.

Throughput is real (non-pad) tokens per second between the end of the warm-up steps and the end of
the last step, as the Trainer counts them; setups run in turns (ABAB...) so a busy machine slows
both alike. Memory: the peak resident set above the phase's start on the CPU (VmHWM, reset per
phase), torch.cuda.max_memory_allocated on a GPU (the other setups' models parked on the CPU).
MFU counts 4 x base parameters FLOPs per token (LoRA: forward + input gradients; attention and
recomputation not counted) against the GPU's dense bf16 peak, or on the CPU against a measured
fp32 matrix product at the same thread count.

Before timing, a numerical check trains fresh, identical copies of baseline and project on the
same rows for a few steps (padded vs packed batches of the same rows) and reports the largest loss
difference. Results: benchmarks/results/train_throughput_<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import torch

import tasks  # noqa: F401
from tasks.core import models
from tasks.core.config import PROJECT_ROOT, load_config
from tasks.core.defaults import SMOLLM2_PYPI
from tasks.training import data
from tasks.training import trainer as training
from tasks.training.config import LoraOptions, TrainOptions
from tasks.training.lora import freeze_and_apply_lora

RESULTS = PROJECT_ROOT / "benchmarks" / "results"

# Random-init shapes: throughput does not depend on weight values, so these need no download.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-1.5b": dict(
        model_type="qwen2",
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "smollm2-135m": dict(
        model_type="llama",
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
    # gpu_check.sh's CPU rehearsal: the same steps in seconds.
    "tiny-qwen2": dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
}

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by device-name fragment.
GPU_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}


@dataclass
class Setup:
    name: str
    options: TrainOptions
    attention: str | None  # None: the model's default


@dataclass
class Phase:
    tokens: int = 0
    seconds: float = 0.0
    peak_bytes: list[int] = field(default_factory=list)
    round_tokens_per_s: list[float] = field(default_factory=list)


# --- model and rows ---------------------------------------------------------------------------


def tokenizer_for_synthetic_rows():
    """A two-token tokenizer: pre-tokenized random rows need only a pad token the trainer can name."""
    from tokenizers import Tokenizer
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(tok_models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<unk>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return tokenizer


def build_base_model(args, placement: models.Placement, attention: str | None):
    """(model, tokenizer) for --model (real weights, or its config with --random-init) or --shape."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {"attn_implementation": attention} if attention else {}
    if args.shape:
        values = dict(SHAPES[args.shape])
        config = AutoConfig.for_model(values.pop("model_type"), **values)
        tokenizer = (
            tokenizer_for_synthetic_rows()
            if not args.data
            else models.load_tokenizer(models.resolve_model_path(SMOLLM2_PYPI))
        )
    else:
        path = models.resolve_model_path(args.model)
        tokenizer = models.load_tokenizer(path)
        if not args.random_init:
            model = models.load_causal_lm(path, placement, attn_implementation=attention)
            return model, tokenizer
        config = AutoConfig.from_pretrained(path)
    torch.manual_seed(args.seed)
    with torch.device(placement.device):  # initialised where it runs: seconds, not a minute, for 1.5B on a GPU
        model = AutoModelForCausalLM.from_config(config, dtype=placement.dtype, **kwargs)
    return model.eval(), tokenizer


def synthetic_rows(spec: str, n_rows: int, vocab_size: int, max_length: int, seed: int) -> list[dict]:
    """Random token rows with lengths from `lognormal:MEDIAN[:SIGMA]`; the first third is the prompt."""
    kind, _, rest = spec.partition(":")
    if kind != "lognormal":
        raise SystemExit(f"--lengths: expected lognormal:MEDIAN[:SIGMA], got {spec!r}")
    median, _, sigma = rest.partition(":")
    rng = random.Random(seed)
    rows = []
    for _ in range(n_rows):
        length = min(max_length, max(8, round(rng.lognormvariate(math.log(float(median)), float(sigma or 0.6)))))
        ids = [rng.randrange(2, vocab_size) for _ in range(length)]
        prompt = max(1, length // 3)
        rows.append({"input_ids": ids, "completion_mask": [0] * prompt + [1] * (length - prompt)})
    return rows


def training_rows(args, tokenizer, vocab_size: int) -> list[dict]:
    if args.data or not args.lengths:
        source = args.data or "pypi:chatterbot-corpus/english"
        rows, bad, _ = data.read_rows(source)
        if bad:
            print(f"{len(bad)} malformed row(s) skipped, first: {bad[0]}", file=sys.stderr)
        random.Random(args.seed).shuffle(rows)
        return data.tokenize_rows(rows[: args.rows], tokenizer, args.max_length).examples
    return synthetic_rows(args.lengths, args.rows or 2000, vocab_size, args.max_length, args.seed)


# --- the two setups ---------------------------------------------------------------------------


def setups_for(args, placement: models.Placement) -> list[Setup]:
    common = dict(
        max_steps=args.warmup + args.steps,
        learning_rate=2e-4,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        logging_steps=10**6,
        save_steps=10**6,
        resume=False,
        seed=args.seed,
        device=placement.device,
        precision=placement.precision,
    )
    overrides = load_config(TrainOptions, None, args.overrides) if args.overrides else TrainOptions()
    project = replace(overrides, **common, batch_size=args.packed_batch_size or args.batch_size)
    baseline = replace(
        project,
        batch_size=args.batch_size,
        packing=False,
        gradient_checkpointing="on",
        liger="off",
        torch_compile=False,
    )
    chosen = {
        "baseline": Setup("baseline", baseline, None),
        "project": Setup("project", project, training.attention_implementation(placement)),
        "project-ckpt": Setup(
            "project-ckpt", replace(project, gradient_checkpointing="on"), training.attention_implementation(placement)
        ),
    }
    return [chosen[name] for name in args.setups.split(",")]


class StepClock:
    """A Trainer callback: wall time and real tokens at the end of every optimizer step."""

    def __new__(cls, device: str):
        from transformers import TrainerCallback

        class _Clock(TrainerCallback):
            def __init__(self):
                self.marks: list[tuple[float, int]] = []

            def on_step_end(self, args, state, control, **kwargs):
                if device == "cuda":
                    torch.cuda.synchronize()
                self.marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

        return _Clock()


def build_trainer(args, setup: Setup, placement: models.Placement, rows: list[dict], lora: LoraOptions, workdir: Path):
    base, tokenizer = build_base_model(args, placement, setup.attention)
    torch.manual_seed(args.seed)  # the same LoRA initialisation in every setup
    model = freeze_and_apply_lora(
        base,
        lora.r,
        lora.alpha,
        lora.dropout,
        lora.target_modules,
        gradient_checkpointing=training.use_gradient_checkpointing(setup.options, placement),
    )
    model.train()
    clock = StepClock(placement.device)
    trainer = training.sft_trainer(
        model, tokenizer, rows, setup.options, placement, workdir / setup.name, args.max_length, callbacks=[clock]
    )
    checkpointing = training.decide_checkpointing(trainer, setup.options, placement, args.max_length)
    return trainer, clock, checkpointing


# --- measuring --------------------------------------------------------------------------------


def reset_peak_memory(device: str) -> int:
    """Start a phase's peak; returns the bytes in use now (the phase's floor)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident set, to now
    return _proc_status_bytes("VmRSS")


def peak_memory(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return _proc_status_bytes("VmHWM")


def _proc_status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def run_phase(trainer, clock, warmup: int, device: str, others: list) -> tuple[int, float, int, int]:
    """One trainer.train() of warmup + steps: (tokens, seconds after warm-up, peak bytes, floor bytes)."""
    if device == "cuda":
        for other in others:  # park the other setups' models: the peak is this setup's alone
            other.model.to("cpu")
        trainer.model.to(device)
    clock.marks.clear()
    floor = reset_peak_memory(device)
    trainer.train()
    peak = peak_memory(device)
    (t0, n0), (t1, n1) = clock.marks[warmup - 1], clock.marks[-1]
    return n1 - n0, t1 - t0, peak, floor


def matmul_flops_per_second(dtype: torch.dtype) -> float:
    """Measured on the CPU: the matrix-product rate in the run's dtype at torch's current thread count."""
    a = torch.randn(512, 512, dtype=dtype)
    b = torch.randn(512, 512, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 4 * 2 * 512**3 / best


def peak_flops(placement: models.Placement) -> tuple[float, str]:
    if placement.device == "cuda":
        name = torch.cuda.get_device_name()
        for fragment, peak in GPU_BF16_PEAK.items():
            if fragment in name:
                return peak, f"{name} dense bf16 data-sheet peak"
        return float("nan"), f"{name}: no peak on record"
    return matmul_flops_per_second(placement.dtype), f"measured 512x512 {placement.precision} matmul, best of 5"


# --- the numerical check ----------------------------------------------------------------------


def loss_check(trainers: dict[str, Any], rows: list[dict], batch_size: int, steps: int) -> dict[str, Any]:
    """Train fresh baseline and project models on the same rows: padded vs packed batches of them.

    Same seed, same LoRA init, same rows per step, the same plain AdamW: only the batch layout,
    checkpointing, attention kernel and loss kernel differ, so the losses must agree within the
    precision's noise, step after step.
    """
    labelled = [
        {
            "input_ids": r["input_ids"],  # what TRL's preparation makes of a row: prompt out of the loss
            "labels": [t if m else -100 for t, m in zip(r["input_ids"], r["completion_mask"])],
        }
        for r in rows[: steps * batch_size]
    ]
    losses: dict[str, list[float]] = {}
    for name, trainer in trainers.items():
        model = trainer.model
        device = next(p.device for p in model.parameters())
        trainable = [p for p in model.parameters() if p.requires_grad]
        saved = [p.detach().clone() for p in trainable]
        optimizer = torch.optim.AdamW(trainable, lr=1e-3)
        # Dropout off: its random masks depend on the batch layout, which is what differs here.
        dropouts = [(m, m.p) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        for module, _ in dropouts:
            module.p = 0.0
        losses[name] = []
        for step in range(steps):
            group = labelled[step * batch_size : (step + 1) * batch_size]
            batch = {
                k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in trainer.data_collator(group).items()
            }
            # The autocast training runs under: the Trainer's compute_loss_context_manager() is no
            # longer it (transformers leaves autocast to accelerate).
            with trainer.accelerator.autocast():
                loss = trainer.compute_loss(model, batch)
            trainer.accelerator.backward(loss)  # scaled when fp16 has a GradScaler: step through it
            if trainer.accelerator.scaler is not None:
                trainer.accelerator.scaler.step(optimizer)
                trainer.accelerator.scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses[name].append(loss.item())
        with torch.no_grad():  # back to the initial adapter: timing starts from the same place
            for parameter, initial in zip(trainable, saved):
                parameter.copy_(initial)
        for module, p in dropouts:
            module.p = p
    names = list(losses)
    reference = losses[names[0]]
    diffs = {name: max(abs(a - b) for a, b in zip(reference, values)) for name, values in losses.items()}
    return {"steps": steps, "rows_per_step": batch_size, "losses": losses, "max_abs_diff": diffs}


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", default=SMOLLM2_PYPI, help="a project model name (Hub id, folder, pypi:...)")
    model.add_argument("--shape", choices=sorted(SHAPES), help="a randomly initialised model of this shape")
    parser.add_argument("--random-init", action="store_true", help="--model's config with random weights")
    parser.add_argument("--data", help="rows from a data file (any project format; default: the chatterbot demo)")
    parser.add_argument("--lengths", help="synthetic rows instead: lognormal:MEDIAN[:SIGMA] tokens")
    parser.add_argument("--rows", type=int, help="rows to use (default: every data row, or 2000 synthetic ones)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per (packed) row, as model.max_length")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per baseline step (train.batch_size)")
    parser.add_argument("--packed-batch-size", type=int, help="packed rows per project step (default: --batch-size)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per setup and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=2, help="ABAB...: each setup runs this many times, in turns")
    parser.add_argument("--check-steps", type=int, default=3, help="steps of the loss check (0: skip it)")
    parser.add_argument("--setups", default="baseline,project", help="comma list of baseline, project, project-ckpt")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="as train.precision"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: OMP_NUM_THREADS or torch's)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a TrainOptions override for the project setup, e.g. --set torch_compile=true",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--name", help="write train_throughput_<name>.{json,md} into --out")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the result files (default: %(default)s)")
    return parser.parse_args(argv)


def run(args) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    placement = models.resolve_placement(args.device, args.precision)
    setups = setups_for(args, placement)
    lora = LoraOptions(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.05, target_modules=["all-linear"])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trainers, clocks, checkpointing, rows = {}, {}, {}, None
        for setup in setups:
            if rows is None:
                probe_model, tokenizer = build_base_model(args, placement, None)
                rows = training_rows(args, tokenizer, probe_model.config.vocab_size)
                base_params = sum(p.numel() for p in probe_model.parameters())
                del probe_model
            trainers[setup.name], clocks[setup.name], checkpointing[setup.name] = build_trainer(
                args, setup, placement, rows, lora, Path(tmp)
            )
        check = None
        if args.check_steps:
            check = loss_check(trainers, rows, args.batch_size, args.check_steps)
        phases = {s.name: Phase() for s in setups}
        for _ in range(args.rounds):
            for setup in setups:
                others = [t for name, t in trainers.items() if name != setup.name]
                tokens, seconds, peak, floor = run_phase(
                    trainers[setup.name], clocks[setup.name], args.warmup, placement.device, others
                )
                phase = phases[setup.name]
                phase.tokens += tokens
                phase.seconds += seconds
                phase.round_tokens_per_s.append(tokens / seconds)
                phase.peak_bytes.append(peak if placement.device == "cuda" else peak - floor)
    peak, peak_source = peak_flops(placement)
    flops_per_token = 4 * base_params
    gib = 1024**3
    result: dict[str, Any] = {
        "model": args.shape or args.model,
        "random_init": bool(args.shape or args.random_init),
        "base_parameters": base_params,
        "lora_r": args.lora_r,
        "device": torch.cuda.get_device_name() if placement.device == "cuda" else platform.processor() or "cpu",
        "placement": placement.__dict__,
        "threads": torch.get_num_threads(),
        "rows": len(rows),
        "mean_row_tokens": sum(len(r["input_ids"]) for r in rows) / len(rows),
        "data": args.data or args.lengths or "pypi:chatterbot-corpus/english",
        "max_length": args.max_length,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "trl", "peft")},
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "peak_flops": peak,
        "peak_flops_source": peak_source,
        "flops_per_token": flops_per_token,
        "setups": {},
        "loss_check": check,
        "seconds": round(time.perf_counter() - started, 1),
    }
    for setup in setups:
        phase = phases[setup.name]
        tokens_per_s = phase.tokens / phase.seconds
        result["setups"][setup.name] = {
            "tokens_per_s": tokens_per_s,
            "tokens": phase.tokens,
            "seconds": phase.seconds,
            "round_tokens_per_s": phase.round_tokens_per_s,
            "peak_gib": max(phase.peak_bytes) / gib,
            "memory": "torch.cuda.max_memory_allocated" if placement.device == "cuda" else "peak RSS above phase start",
            "mfu": tokens_per_s * flops_per_token / peak,
            "batch_size": setup.options.batch_size,
            "packing": setup.options.packing,
            "gradient_checkpointing": checkpointing[setup.name],
            "liger": training.use_liger(setup.options, placement),
            "attention": setup.attention or "default",
            "torch_compile": setup.options.torch_compile,
        }
    if "baseline" in result["setups"]:
        base = result["setups"]["baseline"]["tokens_per_s"]
        result["baseline_tokens_per_s"] = base
        for name in result["setups"]:
            result["setups"][name]["ratio"] = result["setups"][name]["tokens_per_s"] / base
        if "project" in result["setups"]:
            result["project_tokens_per_s"] = result["setups"]["project"]["tokens_per_s"]
            result["ratio"] = result["project_tokens_per_s"] / base
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"model {result['model']} ({'random init, ' if result['random_init'] else ''}"
        f"{result['base_parameters'] / 1e6:.0f}M params), LoRA r={result['lora_r']} all-linear, "
        f"{result['placement']['device']}/{result['placement']['precision']}, {result['device']}, "
        f"{result['threads']} thread(s), load average {result['load_average']}",
        f"data {result['data']}: {result['rows']} rows, mean {result['mean_row_tokens']:.0f} tokens, "
        f"max_length {result['max_length']}; {result['rounds']} round(s) x {result['steps']} timed steps "
        f"(+{result['warmup']} warm-up) per setup",
        "",
        "| setup | rows/step | packing | checkpointing | liger | attention | real tokens/s | per round | ratio "
        "| peak GiB | MFU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in result["setups"].items():
        lines.append(
            f"| {name} | {s['batch_size']}{' packed' if s['packing'] else ''} | {s['packing']} | "
            f"{s['gradient_checkpointing']} | {s['liger']} | {s['attention']} | {s['tokens_per_s']:,.0f} | "
            f"{' / '.join(f'{v:,.0f}' for v in s['round_tokens_per_s'])} | "
            f"{s.get('ratio', float('nan')):.2f}x | {s['peak_gib']:.2f} | {s['mfu']:.1%} |"
        )
    lines.append("")
    lines.append(
        f"MFU: {result['flops_per_token'] / 1e9:.2f} GFLOP per token against "
        f"{result['peak_flops'] / 1e12:.3g} TFLOP/s ({result['peak_flops_source']}). "
        f"Memory: {next(iter(result['setups'].values()))['memory']}."
    )
    check = result.get("loss_check")
    if check:
        losses = "; ".join(
            f"{name} " + ", ".join(f"{v:.4f}" for v in values) for name, values in check["losses"].items()
        )
        worst = max(check["max_abs_diff"].values())
        lines.append(
            f"Loss check ({check['steps']} steps x {check['rows_per_step']} same rows): {losses}; "
            f"max |diff| {worst:.2e}"
        )
    return "\n".join(lines)


def result_paths(name: str, folder: Path = RESULTS) -> tuple[Path, Path]:
    """The JSON and Markdown files of a named run; names may hold dots (`gpu_qwen2.5-1.5b`)."""
    stem = f"train_throughput_{name}"
    return folder / f"{stem}.json", folder / f"{stem}.md"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its summary: stdout is ours alone
        result = run(args)
    if args.name:
        args.out.mkdir(parents=True, exist_ok=True)
        json_path, md_path = result_paths(args.name, args.out)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        md_path.write_text(markdown(result) + "\n")
    print(json.dumps(result) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
