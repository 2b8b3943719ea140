"""The GPU path, exercised on the CPU: half precision after training, the kernels a run picks, the
memory probe, Liger kept to its model, checkpoint folders per placement, the benchmark's files.

Half precision runs here on the tiny model (bf16 and fp16 matmuls and autocast work on this CPU);
CUDA itself is only described (`Placement("cuda", ...)`), faked (`torch.cuda.*` answers) or, for
Liger, stood in for by `tests.doubles.liger`.
"""

from __future__ import annotations

import math
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tasks import publishing
from tasks.core import models
from tasks.core.config import PROJECT_ROOT, load_config
from tasks.publishing import verify
from tasks.publishing.verify import LOGITS_TOLERANCE
from tasks.training import checkpoints, dpo, freeze_and_apply_lora, memory
from tasks.training import trainer as training
from tasks.training.config import LoraFinetuneConfig, PublishOptions, TrainOptions
from tests.doubles import liger as fake_liger

GPU = models.Placement("cuda", "bf16")  # a description: the code under test only reads it
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is your favorite book? I like poetry.",
    "Computers run programs written by people.",
]


def sft_rows(tokenizer, n: int = 12) -> list[dict[str, list[int]]]:
    rows = []
    for text in (TEXTS * n)[:n]:
        ids = tokenizer(text)["input_ids"]
        rows.append({"input_ids": ids, "completion_mask": [0] * 3 + [1] * (len(ids) - 3)})
    return rows


def lora_model(tiny_model_dir, placement: models.Placement):
    model, tokenizer, base_path = models.load_base_model(str(tiny_model_dir), placement)
    return freeze_and_apply_lora(model, 4, 8, 0.0, ["all-linear"]), tokenizer, base_path


def quick_train(precision: str) -> TrainOptions:
    return TrainOptions(
        max_steps=3,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        batch_size=4,
        save_steps=100,
        resume=False,
        precision=precision,
        device="cpu",
    )


# --- 1, 6: generation and verification after half-precision training --------------------------


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_training_then_the_flows_evaluate_and_verify_steps(tiny_model_dir, tmp_path, precision):
    """The flow's steps after training in half precision: generation must not meet an fp32 norm
    output, and verification reloads with the trained kernel and the precision's tolerance."""
    from flows.lora_finetune import evaluate
    from flows.shared_steps import reload_and_verify

    placement = models.Placement("cpu", precision)
    model, tokenizer, base_path = lora_model(tiny_model_dir, placement)
    options = quick_train(precision)
    trainer = training.sft_trainer(model, tokenizer, sft_rows(tokenizer), options, placement, tmp_path / "ckpt", 64)
    result = training.train_sft(trainer, options, placement, 64)
    assert result.steps == 3
    trained_attention = model.config._attn_implementation
    assert trained_attention == training.PACKED_SDPA  # packed rows on the CPU

    cfg = load_config(LoraFinetuneConfig, None, [f"model.name={tiny_model_dir}", "eval.max_new_tokens=4"])
    rows = [
        {"prompt": [{"role": "user", "content": t}], "completion": [{"role": "assistant", "content": t}]} for t in TEXTS
    ]
    report = evaluate.fn(model, tokenizer, rows, cfg)  # the step's own code, without Prefect
    assert math.isfinite(report.eval_loss) and math.isfinite(report.base_eval_loss)
    assert len(report.samples) == len(cfg.eval.sample_prompts)
    frozen = {p.dtype for name, p in model.named_parameters() if "lora_" not in name}
    assert frozen == {placement.dtype}  # the norms too: an fp32 norm feeds fp32 into a half Linear

    folder = publishing.save_adapter(model, tokenizer, tmp_path / "adapter", base_path, None, "lora-finetune", "run")
    reloads = []
    real_load = models.load_causal_lm

    def spy(*args, **kwargs):
        reloads.append(kwargs)
        return real_load(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(verify, "load_causal_lm", spy)  # the name verification reloads with
        verified = reload_and_verify.fn(
            f"file://{folder}", model, tokenizer, base_path, TEXTS[:2], PublishOptions(), token=None
        )
    assert verified.passed, verified.reason
    assert reloads[0].get("attn_implementation") == trained_attention
    assert verified.max_abs_logit_diff <= LOGITS_TOLERANCE[precision]


def test_default_tolerance_follows_the_precision():
    assert PublishOptions().logits_tolerance is None  # resolved per precision by verification
    assert LOGITS_TOLERANCE["fp32"] == 1e-4  # the fp32 default is what it always was
    assert LOGITS_TOLERANCE["fp16"] < LOGITS_TOLERANCE["bf16"]  # fp16 keeps 3 more bits
    assert PublishOptions(logits_tolerance=1e-3).logits_tolerance == 1e-3


def test_dpo_policy_scores_as_its_reference_in_bf16(tiny_model_dir, tmp_path):
    """Held-out scoring of the policy runs under the autocast TRL scores the reference with."""
    from tests.training.test_dpo import pairs, tiny_config

    cfg = tiny_config(tiny_model_dir, tmp_path, "train.precision=bf16", "train.device=cpu")
    placement = models.Placement("cpu", "bf16")
    model, tokenizer, _ = lora_model(tiny_model_dir, placement)
    trainer = dpo.build_trainer(model, tokenizer, pairs(8), pairs(8, offset=50), cfg, placement, tmp_path / "c")
    reference = dpo.score_pairs(trainer, reference=True)
    policy = dpo.score_pairs(trainer, reference=False)  # the untrained LoRA policy *is* the reference
    assert torch.equal(policy.chosen, reference.chosen) and torch.equal(policy.rejected, reference.rejected)


# --- 2, 3: the benchmark ----------------------------------------------------------------------


def bench_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--shape",
        "tiny-qwen2",
        "--lengths",
        "lognormal:24",
        "--rows",
        "64",
        "--max-length",
        "64",
        "--batch-size",
        "4",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--lora-r",
        "4",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
        *extra,
    ]


def test_benchmark_loss_check_runs_under_the_training_autocast(tmp_path, monkeypatch):
    from trl import SFTTrainer

    from benchmarks import train_throughput as bench

    autocast = []  # per forward pass of a loss: did the first decoder layer run under bf16 autocast?
    compute_loss = SFTTrainer.compute_loss

    def record(module, args):
        autocast.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)

    def spy(self, model, inputs, *args, **kwargs):
        hook = model.get_base_model().model.layers[0].register_forward_pre_hook(record)
        try:
            return compute_loss(self, model, inputs, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(SFTTrainer, "compute_loss", spy)
    result = bench.run(bench.parse_args(bench_args(tmp_path, "--precision", "bf16", "--check-steps", "2")))
    assert result["placement"] == {"device": "cpu", "precision": "bf16"}
    losses = result["loss_check"]["losses"]
    assert len(losses["baseline"]) == len(losses["project"]) == 2
    assert all(math.isfinite(v) for values in losses.values() for v in values)
    assert autocast and all(autocast)  # the loss check's steps and the timed ones alike


def test_benchmark_result_files_keep_dotted_names(tmp_path):
    from benchmarks import train_throughput as bench

    json_path, md_path = bench.result_paths("gpu_qwen2.5-1.5b", tmp_path)
    assert (json_path.name, md_path.name) == (
        "train_throughput_gpu_qwen2.5-1.5b.json",
        "train_throughput_gpu_qwen2.5-1.5b.md",
    )
    assert bench.main(bench_args(tmp_path, "--check-steps", "0", "--name", "cpu_tiny2.5-0.1b", "--json")) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["train_throughput_cpu_tiny2.5-0.1b.json", "train_throughput_cpu_tiny2.5-0.1b.md"]


# --- 4, 7: checkpointing by memory, for SFT and DPO -------------------------------------------


@pytest.fixture
def sft(tiny_model_dir, tmp_path):
    """(SFT trainer, its LoRA model) on the CPU in fp32, packed rows."""
    model, tokenizer, _ = lora_model(tiny_model_dir, models.Placement("cpu", "fp32"))
    trainer = training.sft_trainer(
        model, tokenizer, sft_rows(tokenizer), TrainOptions(), models.Placement("cpu", "fp32"), tmp_path, 64
    )
    return trainer, model


def test_memory_probe_counts_what_the_loss_builds(sft):
    """TRL's loss goes through its fused LM head: the probe counts that, not full-vocabulary logits."""
    trainer, model = sft
    model.train()
    batch = trainer.data_collator([trainer.train_dataset[0]])
    tokens = int(batch["input_ids"].numel())
    fused = memory.saved_activation_bytes(model, memory.sft_loss_inputs(batch))
    full_logits = memory.saved_activation_bytes(model, batch)
    assert full_logits > fused
    estimate = memory.probe_memory(trainer, models.Placement("cpu", "fp32"), 10 * tokens, 1.0, memory.sft_loss_inputs)
    assert estimate.activation_bytes == pytest.approx(10 * fused, abs=1)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    assert estimate.resident_bytes == memory.model_bytes(model) + 3 * trainable


def test_a_probe_that_runs_out_of_memory_turns_checkpointing_on(sft, monkeypatch):
    trainer, _ = sft

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(memory, "saved_activation_bytes", out_of_memory)
    options = TrainOptions(memory_budget_gb=1.0)
    assert memory.decide_checkpointing(trainer, options, GPU, 64) is True
    assert trainer.args.activation_checkpointing is True


def test_dpo_decides_checkpointing_by_its_memory_budget(tiny_model_dir, tmp_path, monkeypatch):
    from tests.training.test_dpo import pairs, tiny_config

    decisions = []
    decide = dpo.decide_checkpointing

    def spy(trainer, options, placement, max_length, loss_inputs, sequences_per_example):
        decisions.append((max_length, loss_inputs, sequences_per_example))
        return decide(trainer, options, placement, max_length, loss_inputs, sequences_per_example)

    monkeypatch.setattr(dpo, "decide_checkpointing", spy)
    cfg = tiny_config(tiny_model_dir, tmp_path)
    model, tokenizer, _ = lora_model(tiny_model_dir, models.Placement("cpu", "fp32"))
    trainer = dpo.build_trainer(
        model, tokenizer, pairs(8), pairs(4, offset=50), cfg, models.Placement("cpu", "fp32"), tmp_path / "c"
    )
    assert decisions == [(cfg.model.max_length, dpo.loss_inputs, 2)]  # a pair: two rows per example

    # As on a GPU (`auto`): on when a step would not fit the budget, off when it does.
    roomy, tight = replace(cfg.train, memory_budget_gb=1.0), replace(cfg.train, memory_budget_gb=1e-4)
    assert decide(trainer, tight, GPU, cfg.model.max_length, dpo.loss_inputs, 2) is True
    assert decide(trainer, roomy, GPU, cfg.model.max_length, dpo.loss_inputs, 2) is False
    assert trainer.args.activation_checkpointing is False and not model.is_activation_checkpointing
    estimate = memory.probe_memory(trainer, GPU, 1000, 1.0, dpo.loss_inputs)
    twice = memory.probe_memory(trainer, GPU, 2000, 1.0, dpo.loss_inputs)
    assert twice.activation_bytes == pytest.approx(2 * estimate.activation_bytes, abs=1)


# --- 5: attention on CUDA without flash-attn --------------------------------------------------


def test_packed_rows_take_per_document_attention_without_flash_attn(monkeypatch):
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    assert training.attention_implementation(GPU) == training.PACKED_SDPA
    assert training.attention_implementation(models.Placement("cuda", "fp16")) == training.PACKED_SDPA
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    assert training.attention_implementation(GPU) == "flash_attention_2"
    assert training.attention_implementation(models.Placement("cuda", "fp32")) == training.PACKED_SDPA
    assert training.attention_implementation(models.Placement("cpu", "bf16")) == training.PACKED_SDPA


@pytest.mark.parametrize("attention, linear", [(training.PACKED_SDPA, True), ("sdpa", False)])
def test_saved_activations_grow_linearly_only_with_per_document_attention(tiny_model_dir, attention, linear):
    """The memory probe scales one row to a whole step: true for packed_sdpa, not for a masked sdpa."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    training.register_packed_sdpa()
    model, tokenizer, _ = models.load_base_model(
        str(tiny_model_dir), models.Placement("cpu", "fp32"), attn_implementation=attention
    )
    model = freeze_and_apply_lora(model, 4, 8, 0.0, ["all-linear"]).train()
    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    docs = [tokenizer(t)["input_ids"] for t in TEXTS]

    def per_token(copies: int) -> float:
        batch = collate([{"input_ids": ids} for ids in docs * copies])
        return memory.saved_activation_bytes(model, batch) / batch["input_ids"].numel()

    growth = per_token(32) / per_token(4)
    assert (growth < 1.01) if linear else (growth > 1.3), growth


# --- 8, 11: precision and checkpoint folders by placement --------------------------------------


def fake_gpu(monkeypatch, native_bf16: bool) -> None:
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native_bf16 or including_emulation  # emulated bf16 everywhere, as torch reports it

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


@pytest.mark.parametrize("native_bf16, precision", [(True, "bf16"), (False, "fp16")])
def test_auto_precision_takes_bf16_only_where_the_gpu_has_it(monkeypatch, native_bf16, precision):
    fake_gpu(monkeypatch, native_bf16)
    assert models.resolve_placement() == models.Placement("cuda", precision)


def test_checkpoint_folder_hashes_the_resolved_placement(monkeypatch):
    def folder(*overrides: str) -> Path:
        return checkpoints.checkpoint_dir("lora-finetune", load_config(LoraFinetuneConfig, None, list(overrides)))

    on_cpu = folder()  # auto/auto on this CPU is cpu/fp32
    assert on_cpu == folder("train.device=cpu", "train.precision=fp32")
    assert on_cpu != folder("train.device=cpu", "train.precision=bf16")
    fake_gpu(monkeypatch, native_bf16=True)
    assert folder() != on_cpu  # the same config on a GPU trains in bf16: another run
    assert folder() == folder("train.device=cuda", "train.precision=bf16")


# --- 7, 10: Liger, on its own model only, before the probe ------------------------------------


def test_liger_stays_on_the_model_it_was_applied_to(tiny_model_dir, monkeypatch):
    from transformers.models.qwen2 import modeling_qwen2

    liger = fake_liger.install(monkeypatch)
    names = {name: getattr(modeling_qwen2, name) for name in fake_liger.REBOUND}
    model, tokenizer, _ = lora_model(tiny_model_dir, models.Placement("cpu", "fp32"))
    models.apply_liger(model)
    assert liger.applied == [
        dict(rope=False, cross_entropy=False, fused_linear_cross_entropy=False, rms_norm=True, swiglu=True)
    ]
    assert {name: getattr(modeling_qwen2, name) for name in fake_liger.REBOUND} == names
    assert models.same_kernels(model)["liger"] is True
    ids = torch.tensor([tokenizer(TEXTS[0])["input_ids"]])
    with torch.no_grad():
        model(input_ids=ids)
        assert liger.calls["rms_norm"] > 0 and liger.calls["swiglu"] > 0
        before = dict(liger.calls)
        other, _, _ = models.load_base_model(str(tiny_model_dir), models.Placement("cpu", "fp32"))
        other(input_ids=ids)  # a later model of the same family (a benchmark's baseline, a reload)
    assert liger.calls == before and models.same_kernels(other)["liger"] is False


def test_sft_applies_liger_before_the_memory_probe(tiny_model_dir, tmp_path, monkeypatch):
    liger = fake_liger.install(monkeypatch)
    monkeypatch.setattr(training, "use_liger", lambda options, placement: True)
    model, tokenizer, _ = lora_model(tiny_model_dir, models.Placement("cpu", "fp32"))
    options = TrainOptions(memory_budget_gb=1.0)
    trainer = training.sft_trainer(
        model, tokenizer, sft_rows(tokenizer), options, models.Placement("cpu", "fp32"), tmp_path, 64
    )
    assert trainer.args.use_liger_kernel is False  # the Trainer would patch the whole family at train()
    memory.decide_checkpointing(trainer, options, GPU, 64)
    assert liger.calls["rms_norm"] > 0  # the probe ran the model as it will train


# --- 9: gpu_check.sh, rehearsed ----------------------------------------------------------------


@pytest.mark.slow
def test_gpu_check_rehearsal_brings_back_every_result_file(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--cpu"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "every result file is there" in done.stdout
    names = {p.name for p in tmp_path.iterdir()}
    assert {"train_throughput_rehearsal_tiny-qwen2.json", "train_throughput_rehearsal_tiny-qwen2.md"} <= names
