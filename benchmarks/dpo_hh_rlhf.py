"""DPO on Anthropic HH-RLHF (harmless) pairs: train on some, measure held-out reward accuracy on the rest.

    python -m benchmarks.dpo_hh_rlhf [--data DIR] [--steps N] [--eval-pairs 200] [--set key=value ...]

On a quiet machine let torch use every core (OMP_NUM_THREADS=2 here); when other jobs share the
cores, OMP_NUM_THREADS=1 (the default this script sets) avoids thread thrashing.

Runs the same functions as the `dpo-finetune` flow (preferences → SmolLM2 + LoRA → DPOTrainer →
evaluation before/after → gate), without MLflow or publishing, and writes
benchmarks/results/dpo_hh_rlhf.{json,md}. Reads hh_rlhf_harmless_1800.jsonl.gz from the benchmark
data folder (--data, $FTLLM_BENCH_DATA: benchmarks/bench_data.py, docs/data.md), unless
`--set data.train=...` names another source (e.g. Anthropic/hh-rlhf, the recipe's Hub default).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
from dataclasses import asdict

os.environ.setdefault("OMP_NUM_THREADS", "1")

import tasks  # noqa: F401
from benchmarks import bench_data
from tasks.core import models
from tasks.core.config import PROJECT_ROOT, load_config
from tasks.training import checkpoints, dpo, preferences
from tasks.training.lora import freeze_and_apply_lora

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
CONFIG = PROJECT_ROOT / "configs" / "dpo_hh_rlhf.yaml"


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% confidence interval of a proportion (Wilson score): is the accuracy clearly above 0.5?"""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="default: train.max_steps of the config")
    parser.add_argument("--eval-pairs", type=int, default=200)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default="dpo_hh_rlhf", help="results file stem")
    bench_data.add_data_argument(parser)
    args = parser.parse_args(argv)
    overrides = [f"data.max_eval_rows={args.eval_pairs}", "train.resume=false", *args.overrides]
    if not any(o.partition("=")[0].strip() == "data.train" for o in args.overrides):
        pairs = bench_data.data_file(bench_data.data_folder(args.data), "hh_rlhf_harmless_1800.jsonl.gz")
        overrides.insert(0, f"data.train={pairs}")
    if args.steps:
        overrides.insert(0, f"train.max_steps={args.steps}")
    cfg = load_config(dpo.DpoFinetuneConfig, CONFIG, overrides)
    placement = models.resolve_placement(cfg.train.device, cfg.train.precision)
    started = time.perf_counter()
    model, tokenizer, _ = models.load_base_model(cfg.model.name, placement)
    prefs = preferences.load_preferences(cfg.data, tokenizer, cfg.dpo.max_prompt_tokens)
    model = freeze_and_apply_lora(model, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules)
    output_dir = checkpoints.checkpoint_dir("dpo-benchmark", cfg)
    trainer = dpo.build_trainer(model, tokenizer, prefs.train, prefs.eval, cfg, placement, output_dir)
    t0 = time.perf_counter()
    base = dpo.evaluate_untrained(trainer, cfg.dpo.beta)
    base_eval_s = time.perf_counter() - t0
    result = dpo.train_dpo(trainer, output_dir, resume=False)
    t0 = time.perf_counter()
    trained = dpo.evaluate_trained(trainer, cfg.dpo.beta, base.reference)
    eval_s = time.perf_counter() - t0
    gate = dpo.quality_gate(
        base.metrics["rewards/accuracies"], trained.metrics["rewards/accuracies"], cfg.dpo.min_reward_accuracy
    )
    # How often the reference alone already assigns the chosen reply the higher likelihood: the
    # base model's own "preference", which the implicit reward does not measure.
    ref_prefers_chosen = (base.reference.chosen > base.reference.rejected).float().mean().item()
    checkpoints.remove_checkpoints(output_dir)
    pairs = int(trained.metrics["pairs"])
    low, high = wilson_interval(trained.metrics["rewards/accuracies"] * pairs, pairs)
    report = {
        "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} python -m benchmarks.dpo_hh_rlhf "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "config": str(CONFIG.relative_to(PROJECT_ROOT)),
        "overrides": overrides,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {os.environ.get('OMP_NUM_THREADS')}, "
        f"load average at the end {os.getloadavg()[0]:.1f}",
        "accuracy_95ci": [low, high],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "data": asdict(prefs.summary()),
        "bad_rows": [str(b) for b in prefs.bad_rows],
        "train": result.summary(),
        "seconds_per_step": result.seconds / max(1, result.steps - result.resumed_from_step),
        "base_eval": base.metrics,
        "eval": trained.metrics,
        "reference_prefers_chosen_by_likelihood": ref_prefers_chosen,
        "gate": {"passed": gate.passed, "reason": gate.reason},
        "seconds": {
            "base_eval": base_eval_s,
            "train": result.seconds,
            "eval": eval_s,
            "total": time.perf_counter() - started,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    b, e = base.metrics, trained.metrics
    (RESULTS / f"{args.name}.md").write_text(
        "\n".join(
            [
                f"# DPO on HH-RLHF harmless: {result.steps} steps, {int(e['pairs'])} held-out pairs",
                "",
                f"`{report['command']}` ({report['machine']})",
                "",
                "| | reward accuracy | reward margin | logp chosen | logp rejected |",
                "| --- | --- | --- | --- | --- |",
                f"| untrained | {b['rewards/accuracies']:.3f} | {b['rewards/margins']:.4f} | {b['logps/chosen']:.1f} | {b['logps/rejected']:.1f} |",
                f"| trained | {e['rewards/accuracies']:.3f} | {e['rewards/margins']:.4f} | {e['logps/chosen']:.1f} | {e['logps/rejected']:.1f} |",
                "",
                f"Trained held-out reward accuracy, 95% interval (Wilson): {low:.3f}-{high:.3f}.",
                f"Reference prefers the chosen reply by likelihood alone in {ref_prefers_chosen:.3f} of held-out pairs.",
                f"Gate: {'passed' if gate.passed else 'FAILED'}: {gate.reason}.",
                "",
                f"Train: {result.seconds:.0f} s ({report['seconds_per_step']:.1f} s/step); evaluation before {base_eval_s:.0f} s, "
                f"after {eval_s:.0f} s; total {report['seconds']['total']:.0f} s; peak RSS {report['peak_rss_gb']:.1f} GB.",
                f"Data: {asdict(prefs.summary())}",
                "",
            ]
        )
    )
    print((RESULTS / f"{args.name}.md").read_text())
    return 0 if gate.passed else 1


if __name__ == "__main__":
    sys.exit(main())
