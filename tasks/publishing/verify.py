"""Verify a fetched adapter against the model still in memory: every adapter tensor bit for bit,
the logits on a few probe prompts, and one greedy sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.core.models import Placement, chat_template_ids, load_causal_lm, same_kernels
from tasks.publishing.target import ADAPTER_WEIGHTS


@dataclass
class Verification:
    passed: bool
    tensors_identical: bool
    max_abs_logit_diff: float
    n_tensors: int
    sample: str
    reason: str  # why it failed; empty when it passed


def _probe_ids(tokenizer, prompt: str, device):
    import torch

    ids = chat_template_ids(tokenizer, [{"role": "user", "content": prompt}])
    return torch.tensor([ids], device=device)


def _compare_tensors(trained: dict, fetched: dict) -> tuple[bool, str]:
    import torch

    missing = sorted(set(trained) - set(fetched))
    extra = sorted(set(fetched) - set(trained))
    if missing or extra:
        return False, (
            f"adapter tensors differ in name: {len(missing)} missing from the published file "
            f"(e.g. {missing[:1]}), {len(extra)} unexpected (e.g. {extra[:1]})"
        )
    differing = [
        k
        for k in sorted(trained)
        if trained[k].dtype != fetched[k].dtype
        or trained[k].shape != fetched[k].shape
        or not torch.equal(trained[k].detach().cpu(), fetched[k].cpu())
    ]
    if differing:
        return False, f"{len(differing)} of {len(trained)} adapter tensors differ bit-wise (first: {differing[0]})"
    return True, ""


# publish.logits_tolerance by the trained model's precision, when not set. The reload runs the
# trained kernels, so rounding alone separates the two: in half precision one rounding step of a
# logit between 32 and 64 is 0.25 (bf16) or 0.03 (fp16).
LOGITS_TOLERANCE = {"fp32": 1e-4, "fp16": 0.0625, "bf16": 0.5}


def _placement_of(trained_model) -> Placement:
    import torch

    parameter = next(trained_model.get_base_model().parameters())
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[parameter.dtype]
    return Placement("cuda" if parameter.device.type == "cuda" else "cpu", precision)


def _reload_like(trained_model, base_model_path: str, fetched_dir: Path):
    """The fetched adapter on a fresh base model, on the trained model's device, in its precision and
    with its kernels (attention implementation, Liger): in half precision two kernels of the same
    math disagree by far more than one rounding step."""
    from peft import PeftModel

    base = load_causal_lm(base_model_path, _placement_of(trained_model), **same_kernels(trained_model))
    reloaded = PeftModel.from_pretrained(base, fetched_dir).eval()
    # Same dtype, parameter by parameter, whatever training left each one in.
    trained_dtypes = {name: p.dtype for name, p in trained_model.named_parameters()}
    for name, p in reloaded.named_parameters():
        if name in trained_dtypes and p.dtype != trained_dtypes[name]:
            p.data = p.data.to(trained_dtypes[name])
    return reloaded


def verify_adapter(
    trained_model,
    tokenizer,
    base_model_path: str,
    fetched_dir: Path,
    probe_prompts: list[str],
    tolerance: float | None = None,
) -> Verification:
    """Reload the fetched adapter on a fresh base model and compare it with the trained one.

    `tolerance`: the max |logit difference| accepted; None: LOGITS_TOLERANCE for the trained precision.
    """
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    fetched_dir = Path(fetched_dir)
    weights = fetched_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        return Verification(False, False, float("inf"), 0, "", f"{weights} is missing: nothing to verify")
    if not probe_prompts:
        raise ValueError("verify_adapter: probe_prompts must hold at least one prompt")

    trained_state = get_peft_model_state_dict(trained_model)
    tensors_identical, tensor_reason = _compare_tensors(trained_state, load_file(str(weights)))
    reloaded = _reload_like(trained_model, base_model_path, fetched_dir)
    if tolerance is None:
        tolerance = LOGITS_TOLERANCE[_placement_of(trained_model).precision]

    parameter = next(trained_model.get_base_model().parameters())
    modes = {module: module.training for module in trained_model.modules()}
    trained_model.eval()
    max_diff, sample = 0.0, ""
    # Half-precision training runs under autocast: so do both forward passes here.
    half = parameter.dtype in (torch.bfloat16, torch.float16)
    try:
        with torch.inference_mode(), torch.autocast(parameter.device.type, dtype=parameter.dtype, enabled=half):
            for prompt in probe_prompts:
                ids = _probe_ids(tokenizer, prompt, parameter.device)
                expected = trained_model(input_ids=ids).logits.float()
                actual = reloaded(input_ids=ids).logits.float()
                max_diff = max(max_diff, (expected - actual).abs().max().item())
            ids = _probe_ids(tokenizer, probe_prompts[0], parameter.device)
            out = reloaded.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=12,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            sample = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    finally:
        for module, training in modes.items():  # exactly as it was, module by module
            module.training = training
        del reloaded

    reasons = [tensor_reason] if not tensors_identical else []
    if not max_diff <= tolerance:  # also catches NaN
        reasons.append(f"max |logit difference| {max_diff:.3g} exceeds the tolerance {tolerance:g}")
    return Verification(
        passed=not reasons,
        tensors_identical=tensors_identical,
        max_abs_logit_diff=max_diff,
        n_tensors=len(trained_state),
        sample=sample,
        reason="; ".join(reasons),
    )
