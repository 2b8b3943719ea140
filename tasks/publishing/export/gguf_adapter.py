"""A PEFT LoRA adapter as a GGUF LoRA adapter that llama.cpp (and Ollama's ADAPTER) loads over its base GGUF.

Tensor names come from the `gguf` library's own name map for the architecture, and the file is
written by its `GGUFWriter`: `blk.N.<tensor>.weight.lora_a` (rank x in) and `.lora_b` (out x rank),
with `adapter.lora.alpha` so that llama.cpp scales by alpha / rank as PEFT does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Architectures whose exported files were checked against transformers here. For the llama
# family, llama.cpp's own converter reorders the rows of the q and k projections of the base model
# (its rotary embedding pairs neighbouring dimensions, HF's pairs the two halves), so an adapter's
# lora_b rows on q_proj / k_proj need the same order; the others keep HF's order.
ROWS_REORDERED = {"llama": ("q_proj", "k_proj"), "qwen2": ()}


class UnsupportedExport(ValueError):
    """An adapter that cannot be written for llama.cpp; the message says why."""


@dataclass(frozen=True)
class GgufAdapter:
    path: Path
    architecture: str
    tensors: int  # lora_a + lora_b tensors written
    rank: int
    alpha: float  # as written: llama.cpp scales by alpha / rank


def _architecture(model_type: str):
    from importlib.metadata import version

    import gguf

    by_name = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
    if model_type not in by_name:
        raise UnsupportedExport(f"llama.cpp has no architecture named {model_type!r} (gguf {version('gguf')})")
    if model_type not in ROWS_REORDERED:
        raise UnsupportedExport(
            f"exporting {model_type!r} adapters is not supported: checked architectures are {sorted(ROWS_REORDERED)}"
        )
    return by_name[model_type]


def _reorder_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotary layout (two halves per head) -> llama.cpp's (interleaved pairs), on the output rows."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _alpha(config: dict) -> tuple[int, float]:
    if config.get("peft_type") != "LORA":
        raise UnsupportedExport(f"only LoRA adapters can be exported, this one is {config.get('peft_type')!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise UnsupportedExport(f"per-module {key} is not supported by llama.cpp's single alpha per adapter")
    if config.get("use_dora"):
        raise UnsupportedExport("DoRA adapters have no llama.cpp form")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    # rsLoRA scales by alpha / sqrt(r); llama.cpp always divides by r.
    return rank, alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


@dataclass(frozen=True)
class LoraTensors:
    """An adapter's matrices under llama.cpp's tensor names, rows already in llama.cpp's order."""

    model_type: str
    arch_name: str  # llama.cpp's name of the architecture
    rank: int
    alpha: float  # llama.cpp scales by alpha / rank
    pairs: dict[str, tuple[np.ndarray, np.ndarray]]  # "blk.0.attn_q.weight" -> (A: rank x in, B: out x rank)

    def delta(self, name: str) -> np.ndarray:
        """The weight change B @ A * alpha / rank of one tensor (out x in)."""
        lora_a, lora_b = self.pairs[name]
        return (lora_b @ lora_a) * (self.alpha / self.rank)


def read_lora(adapter_dir: Path, base_config: dict) -> LoraTensors:
    """A PEFT adapter folder (adapter_config.json + adapter_model.safetensors) as llama.cpp tensors."""
    import gguf
    from safetensors.numpy import load_file

    model_type = base_config.get("model_type", "?")
    arch = _architecture(model_type)
    rank, alpha = _alpha(json.loads((adapter_dir / "adapter_config.json").read_text()))
    names = gguf.get_tensor_name_map(arch, int(base_config["num_hidden_layers"]))
    heads = {
        "q_proj": base_config["num_attention_heads"],
        "k_proj": base_config.get("num_key_value_heads") or base_config["num_attention_heads"],
    }
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs = {}
    for key in sorted(weights):
        if ".lora_B." in key:
            continue  # read with its lora_A
        if ".lora_A." not in key:
            raise UnsupportedExport(f"{key}: only LoRA A/B matrices can be exported (no embeddings or modules_to_save)")
        module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
        name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise UnsupportedExport(f"{module}: llama.cpp has no tensor for this module of a {model_type} model")
        lora_a = weights[key].astype(np.float32)
        lora_b = weights[key.replace(".lora_A.", ".lora_B.")].astype(np.float32)
        projection = module.rsplit(".", 1)[-1]
        if projection in ROWS_REORDERED[model_type]:
            lora_b = _reorder_rows(lora_b, heads[projection])
        pairs[name] = (lora_a, lora_b)
    if not pairs:
        raise UnsupportedExport(f"{adapter_dir}: no LoRA matrices found")
    return LoraTensors(model_type, gguf.MODEL_ARCH_NAMES[arch], rank, alpha, pairs)


def write_gguf_adapter(lora: LoraTensors, target: Path) -> GgufAdapter:
    """Write the adapter as a GGUF LoRA adapter file."""
    import gguf

    writer = gguf.GGUFWriter(str(target), arch=lora.arch_name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, lora.alpha)
    for name, (lora_a, lora_b) in lora.pairs.items():
        writer.add_tensor(f"{name}.lora_a", lora_a)
        writer.add_tensor(f"{name}.lora_b", lora_b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GgufAdapter(target, lora.model_type, 2 * len(lora.pairs), lora.rank, lora.alpha)
