"""The training fast path: packed rows stay apart, its loss matches the notebook-style baseline,
and the per-device choices (checkpointing by memory, Liger, precision, attention) are the right ones."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from tasks.core import models
from tasks.core.config import ConfigError
from tasks.training import memory
from tasks.training import trainer as training
from tasks.training.config import TrainOptions
from tasks.training.lora import freeze_and_apply_lora

CPU = models.Placement("cpu", "fp32")
GPU = models.Placement("cuda", "bf16")  # a description only: the selection logic needs no GPU


def documents(tokenizer) -> list[list[int]]:
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "What is your favorite book? I like poetry.",
        "Computers run programs written by people.",
    ]
    return [tokenizer(text)["input_ids"] for text in texts]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer, _ = models.load_base_model(str(tiny_model_dir), CPU)
    return model, tokenizer


@pytest.mark.parametrize("attention", ["sdpa", "eager", training.PACKED_SDPA])
def test_packed_documents_do_not_attend_to_each_other(tiny_model_dir, attention):
    """A document's logits packed beside others (TRL's padding-free batch) equal its logits alone."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    training.register_packed_sdpa()
    model, tokenizer, _ = models.load_base_model(str(tiny_model_dir), CPU, attn_implementation=attention)
    docs = documents(tokenizer)
    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    packed = collate([{"input_ids": ids} for ids in docs])
    assert "attention_mask" not in packed  # position ids alone mark the documents
    with torch.no_grad():
        # use_cache=False as in training (TRL sets it): with a KV cache, transformers skips the
        # packed-row detection and the documents would see each other.
        packed_logits = model(
            input_ids=packed["input_ids"],
            position_ids=packed["position_ids"],
            cu_seq_lens_q=packed["cu_seq_lens_q"],
            use_cache=False,
        ).logits[0]
        # Control: the same flat row with running positions lets later documents see earlier ones.
        leaky_logits = model(input_ids=packed["input_ids"], use_cache=False).logits[0]
        # Generation (a KV cache, no document boundaries) takes the plain path with every kernel.
        assert model.generate(torch.tensor([docs[0]]), max_new_tokens=2, do_sample=False).shape[1] == len(docs[0]) + 2
        start = 0
        for ids in docs:
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            assert torch.allclose(packed_logits[start : start + len(ids)], alone, atol=1e-5), attention
            if start:
                assert (leaky_logits[start : start + len(ids)] - alone).abs().max() > 1e-3
            start += len(ids)


def test_fast_path_loss_matches_the_notebook_baseline(tiny_model_dir):
    """Same rows, same LoRA init: packed without checkpointing vs padded with it, step after step."""
    from benchmarks import train_throughput as bench

    args = bench.parse_args(
        [
            "--model",
            str(tiny_model_dir),
            "--steps",
            "1",
            "--rounds",
            "1",
            "--check-steps",
            "4",
            "--batch-size",
            "4",
            "--lora-r",
            "8",
            "--rows",
            "96",
        ]
    )
    result = bench.run(args)
    check = result["loss_check"]
    baseline, project = check["losses"]["baseline"], check["losses"]["project"]
    assert len(baseline) == len(project) == 4
    assert baseline[-1] < baseline[0]  # it trains: the comparison is not between two frozen models
    assert max(abs(a - b) for a, b in zip(baseline, project)) < 1e-4  # fp32 noise
    # The benchmark's own report on the same run: both setups measured, the JSON keys promised.
    setups = result["setups"]
    assert setups["baseline"]["gradient_checkpointing"] and not setups["baseline"]["packing"]
    assert setups["project"]["packing"] and not setups["project"]["gradient_checkpointing"]
    assert result["baseline_tokens_per_s"] > 0 and result["project_tokens_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["project_tokens_per_s"] / result["baseline_tokens_per_s"])
    json.dumps(result)  # --json prints it as one object


def test_default_sft_trainer_on_the_cpu_is_packed_padding_free_without_checkpointing(tiny, tmp_path):
    model, tokenizer = tiny
    lora = freeze_and_apply_lora(model, 4, 8, 0.0, ["all-linear"])
    rows = [{"input_ids": ids, "completion_mask": [0] * 3 + [1] * (len(ids) - 3)} for ids in documents(tokenizer)] * 4
    options = TrainOptions(max_steps=1, save_steps=10)
    trainer = training.sft_trainer(lora, tokenizer, rows, options, CPU, tmp_path, max_length=64)
    assert memory.decide_checkpointing(trainer, options, CPU, 64) is False
    assert lora.config._attn_implementation == training.PACKED_SDPA
    args = trainer.args
    assert (args.bf16, args.fp16, args.activation_checkpointing, args.use_liger_kernel) == (False, False, False, False)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one flat row, no padding
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) == len(rows)  # every row begins again at position 0
    forced = replace(options, gradient_checkpointing="on")
    assert (
        memory.decide_checkpointing(
            training.sft_trainer(lora, tokenizer, rows, forced, CPU, tmp_path, 64), forced, CPU, 64
        )
        is True
    )
    # The notebook style from the same function: padded rows with an attention mask.
    padded = training.sft_trainer(lora, tokenizer, rows, replace(options, packing=False), CPU, tmp_path, 64)
    batch = next(iter(padded.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == options.batch_size and "attention_mask" in batch


def test_gradient_checkpointing_by_device_and_memory():
    auto = TrainOptions()
    assert memory.use_gradient_checkpointing(auto, CPU) is False  # on the CPU it only costs time
    assert memory.use_gradient_checkpointing(auto, GPU) is True  # no estimate yet: the safe guess
    fits = memory.MemoryEstimate(resident_bytes=4 << 30, activation_bytes=20 << 30, budget_bytes=40 << 30)
    tight = memory.MemoryEstimate(resident_bytes=4 << 30, activation_bytes=40 << 30, budget_bytes=40 << 30)
    assert fits.fits and not tight.fits
    assert memory.use_gradient_checkpointing(auto, GPU, fits) is False
    assert memory.use_gradient_checkpointing(auto, GPU, tight) is True
    assert memory.use_gradient_checkpointing(TrainOptions(gradient_checkpointing="on"), CPU) is True
    assert memory.use_gradient_checkpointing(TrainOptions(gradient_checkpointing="off"), GPU, tight) is False


def test_liger_precision_and_attention_by_device(tmp_path):
    assert training.use_liger(TrainOptions(liger="on"), CPU) is False  # Triton kernels: CUDA only
    assert training.use_liger(TrainOptions(liger="off"), GPU) is False
    liger_installed = training.importlib.util.find_spec("liger_kernel") is not None
    assert training.use_liger(TrainOptions(), GPU) is liger_installed
    if not liger_installed:
        with pytest.raises(ConfigError, match="train.liger.*liger-kernel"):
            training.use_liger(TrainOptions(liger="on"), GPU)
    gpu_args = training.trainer_arguments(TrainOptions(), GPU, tmp_path)
    assert gpu_args["bf16"] and not gpu_args["use_cpu"] and gpu_args["activation_checkpointing"]
    cpu_args = training.trainer_arguments(TrainOptions(), CPU, tmp_path)
    assert not cpu_args["bf16"] and cpu_args["use_cpu"] and not cpu_args["activation_checkpointing"]
    assert training.attention_implementation(CPU) == training.PACKED_SDPA
    from transformers.utils import is_flash_attn_2_available

    flash = is_flash_attn_2_available()
    assert training.attention_implementation(GPU) == ("flash_attention_2" if flash else training.PACKED_SDPA)
    assert training.attention_implementation(models.Placement("cuda", "fp32")) == training.PACKED_SDPA
    with pytest.raises(ConfigError, match="train.memory_budget_gb"):
        TrainOptions(memory_budget_gb=0)


def test_memory_probe_counts_saved_activations(tiny):
    """The probe behind auto checkpointing: linear in tokens, and checkpointing keeps far less."""
    model, tokenizer = tiny
    lora = freeze_and_apply_lora(model, 4, 8, 0.0, ["all-linear"])
    lora.train()
    ids = (documents(tokenizer)[0] * 20)[:96]

    def batch(n: int) -> dict:
        return {"input_ids": torch.tensor([ids[:n]]), "labels": torch.tensor([ids[:n]])}

    short, long = memory.saved_activation_bytes(lora, batch(48)), memory.saved_activation_bytes(lora, batch(96))
    assert 1.7 < long / short < 2.3
    lora.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    lora.enable_input_require_grads()
    checkpointed = memory.saved_activation_bytes(lora, batch(96))
    assert checkpointed < long / 2
    estimate = memory.estimate_memory(lora, batch(48), tokens_per_step=96, budget_gib=1.0)
    assert lora.is_activation_checkpointing  # the probe measured without it and put it back
    assert abs(estimate.activation_bytes - long) / long < 0.15
    assert estimate.fits  # a 2-layer model in a 1 GiB budget
    assert not memory.estimate_memory(lora, batch(48), tokens_per_step=96, budget_gib=1e-6).fits
