"""GGUF / Ollama export: a SmolLM2 adapter written as GGUF, loaded by llama.cpp over its base, checked
against transformers token by token; merged q8_0; the Modelfile; architectures llama.cpp cannot take."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.core.config import ConfigError
from tasks.core.defaults import SMOLLM2_PYPI
from tasks.core.llamacpp import start_llama_server
from tasks.publishing import ExportOptions, UnsupportedExport, export_gguf, export_to_run


def save_random_adapter(model, folder: Path, base_model: str, target_modules) -> Path:
    """A LoRA adapter with small random B (a trained adapter's shape: it changes some replies)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=target_modules, task_type="CAUSAL_LM", init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(0.05)
    peft_model.save_pretrained(folder)
    (folder / "ftllm.json").write_text(json.dumps({"base_model": base_model}))
    return folder


@pytest.fixture(scope="module")
def smollm2_adapter(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from tasks.core.models import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(SMOLLM2_PYPI), dtype=torch.float32)
    return save_random_adapter(base, tmp_path_factory.mktemp("smollm2") / "adapter", SMOLLM2_PYPI, "all-linear")


def test_options_are_checked_with_the_key_named():
    with pytest.raises(ConfigError, match=r"^export\.merged\[0\]: 'q4' is not one of f32, f16, q8_0"):
        ExportOptions(merged=["q4"])
    with pytest.raises(ConfigError, match=r"^export\.min_agreement"):
        ExportOptions(min_agreement=1.5)


@pytest.mark.slow
def test_the_adapter_exports_and_llamacpp_answers_like_transformers(smollm2_adapter, tmp_path):
    import gguf
    import httpx

    result = export_gguf(smollm2_adapter, tmp_path / "out", ExportOptions(merged=["q8_0"]))
    # llama.cpp (base + adapter GGUF) vs transformers (base + PEFT adapter), 32 greedy tokens, 5 prompts.
    assert result.agreement.share >= 0.95 and len(result.agreement.per_prompt) == 5
    print(f"token agreement llama.cpp vs transformers: {result.agreement}")

    adapter = gguf.GGUFReader(str(result.adapter_gguf))
    assert adapter.fields["general.type"].contents() == "adapter"
    assert adapter.fields["adapter.type"].contents() == "lora"
    assert adapter.fields["adapter.lora.alpha"].contents() == 16.0
    names = {t.name for t in adapter.tensors}
    assert (
        len(names) == 30 * 7 * 2 and "blk.0.attn_q.weight.lora_a" in names and "blk.29.ffn_down.weight.lora_b" in names
    )

    lines = result.modelfile.read_text().splitlines()
    assert lines[0] == f"FROM {result.base_gguf}" and lines[1] == "ADAPTER ./adapter.gguf"
    assert lines[2].startswith('TEMPLATE """') and "<|im_start|>{{ .Role }}" in result.modelfile.read_text()
    assert 'PARAMETER stop "<|im_end|>"' in lines and "PARAMETER temperature 0.2" in lines

    merged = gguf.GGUFReader(str(result.merged["q8_0"]))
    kinds = {t.name: t.tensor_type.name for t in merged.tensors}
    assert kinds["blk.0.attn_q.weight"] == "Q8_0" and kinds["blk.0.attn_norm.weight"] == "F32"
    server, url = start_llama_server(result.merged["q8_0"], context=1024)
    reply = httpx.post(
        f"{url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Name three colors."}], "max_tokens": 16, "temperature": 0},
        timeout=120,
    ).json()["choices"][0]["message"]["content"]
    assert "Red" in reply
    del server


@pytest.mark.slow
def test_the_chat_apps_llamacpp_serves_base_plus_adapter(smollm2_adapter, tmp_path):
    from tasks.chat.backends import ChatModelOptions, make_chat_model
    from tasks.chat.llamacpp import LlamaCppOptions, start_llamacpp

    result = export_gguf(smollm2_adapter, tmp_path / "out", ExportOptions(verify=False))
    with pytest.raises(ConfigError, match=r"^llamacpp\.adapter: adapter GGUF not found"):
        LlamaCppOptions(adapter=str(tmp_path / "missing.gguf"))
    served = start_llamacpp(LlamaCppOptions(enabled=True, adapter=str(result.adapter_gguf), parallel=2, context=2048))
    assert served.adapter_path == result.adapter_gguf
    options = ChatModelOptions(provider="openai", model=served.alias, base_url=served.base_url, max_new_tokens=8)
    assert make_chat_model(options).invoke([("user", "Name three colors.")]).text
    served.stop()


def tiny_opt(folder: Path):
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
        max_position_embeddings=32, word_embed_proj_dim=16,
    )  # fmt: skip
    model = OPTForCausalLM(config)
    model.save_pretrained(folder)
    return model


def test_an_architecture_llamacpp_cannot_take_fails_with_the_reason_and_is_recorded(tmp_path):
    import mlflow

    base = tmp_path / "tiny-opt"
    adapter = save_random_adapter(tiny_opt(base), tmp_path / "adapter", str(base), ["q_proj", "v_proj"])
    with pytest.raises(UnsupportedExport, match="llama.cpp has no architecture named 'opt'"):
        export_gguf(adapter, tmp_path / "out", ExportOptions())
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("export")  # this store's own: not whichever experiment the process used last
    with mlflow.start_run() as run:
        reason = export_to_run(adapter, ExportOptions())  # what the training flows call after publishing
    assert reason == "UnsupportedExport: llama.cpp has no architecture named 'opt' (gguf 0.19.0)"
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["export.gguf.status"] == "failed" and "'opt'" in tags["export.gguf.reason"]
    assert not mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="gguf")


def test_a_base_that_is_no_gguf_is_named(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    adapter = save_random_adapter(base, tmp_path / "adapter", str(tiny_model_dir), "all-linear")
    with pytest.raises(UnsupportedExport, match=r"is no GGUF: set export\.base_gguf"):
        export_gguf(adapter, tmp_path / "out", ExportOptions())


def test_reordered_rows_match_llamacpps_rotary_layout():
    from tasks.publishing.export.gguf_adapter import _reorder_rows

    # One head of 4 rows: HF pairs rows (0, 2) and (1, 3); llama.cpp wants the pairs next to each other.
    rows = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert _reorder_rows(rows, heads=1)[:, 0].tolist() == [0, 4, 2, 6]
