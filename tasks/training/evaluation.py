"""Held-out evaluation of a LoRA model against its own base (the same weights, adapter disabled)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from tasks.core.models import chat_template_ids


@dataclass
class EvalReport:
    eval_loss: float
    base_eval_loss: float
    eval_tokens: int
    samples: list[dict[str, str]] = field(default_factory=list)  # prompt, base, adapter

    @property
    def eval_perplexity(self) -> float:
        return math.exp(min(self.eval_loss, 50.0))

    @property
    def base_eval_perplexity(self) -> float:
        return math.exp(min(self.base_eval_loss, 50.0))

    def metrics(self) -> dict[str, float]:
        return {
            "eval_loss": self.eval_loss,
            "base_eval_loss": self.base_eval_loss,
            "eval_perplexity": self.eval_perplexity,
            "base_eval_perplexity": self.base_eval_perplexity,
        }


@torch.no_grad()
def completion_loss(
    model, examples: list[dict[str, list[int]]], pad_token_id: int, batch_size: int = 8
) -> tuple[float, int]:
    """Mean cross-entropy over completion tokens (token-weighted, as training computes it)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, example in enumerate(batch):
            n = len(example["input_ids"])
            ids[i, :n] = torch.tensor(example["input_ids"])
            attention[i, :n] = 1
            labels[i, :n] = torch.tensor(
                [t if m else -100 for t, m in zip(example["input_ids"], example["completion_mask"])]
            )
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
        losses = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)),
            shift_labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += losses.item()
        count += int((shift_labels != -100).sum())
    return total / max(count, 1), count


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy reply to one user message, rendered with the model's chat template."""
    device = next(model.parameters()).device
    ids = torch.tensor([chat_template_ids(tokenizer, [{"role": "user", "content": prompt}])], device=device)
    output = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip()


def evaluate_against_base(
    model,
    tokenizer,
    examples: list[dict[str, list[int]]],
    sample_prompts: list[str],
    max_new_tokens: int = 48,
    batch_size: int = 8,
) -> EvalReport:
    """Held-out loss of the adapter and of the base (adapter disabled), plus side-by-side samples."""
    was_training = model.training
    model.eval()
    try:
        adapter_loss, tokens = completion_loss(model, examples, tokenizer.pad_token_id, batch_size)
        with _adapter_disabled(model):
            base_loss, _ = completion_loss(model, examples, tokenizer.pad_token_id, batch_size)
            base_samples = [generate(model, tokenizer, p, max_new_tokens) for p in sample_prompts]
        adapter_samples = [generate(model, tokenizer, p, max_new_tokens) for p in sample_prompts]
    finally:
        model.train(was_training)
    samples = [{"prompt": p, "base": b, "adapter": a} for p, b, a in zip(sample_prompts, base_samples, adapter_samples)]
    return EvalReport(eval_loss=adapter_loss, base_eval_loss=base_loss, eval_tokens=tokens, samples=samples)


def _adapter_disabled(model):
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
