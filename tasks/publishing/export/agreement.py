"""Does llama.cpp generate what transformers generates? Greedy tokens from both, on the same prompt ids.

llama.cpp loads the base as an f32 GGUF (the same weights transformers dequantizes from a quantized
GGUF: quantized matrix products in llama.cpp round differently and flip near-ties) plus the adapter
GGUF; transformers loads the base plus the PEFT adapter. Both get the prompt as token ids, so the
tokenizers cannot differ. Agreement is the share of the 2 x `tokens` positions where both chose the
same token (a reply that stops early counts its missing positions as disagreements).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.core.llamacpp import start_llama_server
from tasks.core.models import chat_template_ids, load_causal_lm, load_tokenizer, resolve_placement

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "How do I boil an egg?",
    "Name three colors.",
    "Tell me a joke.",
]


@dataclass(frozen=True)
class Agreement:
    share: float  # over all prompts
    per_prompt: list[float]
    tokens: int


def _agreement(a: list[int], b: list[int], tokens: int) -> float:
    a, b = a[:tokens], b[:tokens]
    return sum(x == y for x, y in zip(a, b)) / max(len(a), len(b), 1)


def token_agreement(
    base_path: str, adapter_dir: Path, base_f32_gguf: Path, adapter_gguf: Path, prompts: list[str], tokens: int = 32
) -> Agreement:
    import httpx
    import torch
    from peft import PeftModel

    tokenizer = load_tokenizer(base_path)
    base = load_causal_lm(base_path, resolve_placement("cpu", "fp32"))  # fp32: what the f32 GGUF holds
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    server, url = start_llama_server(base_f32_gguf, [adapter_gguf], context=2048)
    per_prompt = []
    try:
        for prompt in prompts:
            ids = chat_template_ids(tokenizer, [{"role": "user", "content": prompt}])
            with torch.inference_mode():
                output = model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=False)
            expected = output[0, len(ids) :].tolist()
            request = {"prompt": ids, "n_predict": tokens, "temperature": 0, "return_tokens": True}
            got = httpx.post(f"{url}/completion", json=request, timeout=120).raise_for_status().json()["tokens"]
            per_prompt.append(round(_agreement(expected, got, tokens), 4))
    finally:
        del server
    return Agreement(round(sum(per_prompt) / len(per_prompt), 4), per_prompt, tokens)
