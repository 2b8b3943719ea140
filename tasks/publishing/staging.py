"""What exactly is published: the adapter folder a flow saves, checked, and the copy that goes out."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tasks.core.models import is_hub_id, is_pypi_model
from tasks.publishing.card import is_local_path
from tasks.publishing.errors import PublishError
from tasks.publishing.target import ADAPTER_CONFIG, ADAPTER_WEIGHTS

log = logging.getLogger(__name__)

TOKENIZER_VOCABULARIES = {"tokenizer.json", "vocab.json"}
RECORD = "ftllm.json"  # what save_adapter writes beside the adapter


def save_adapter(
    model, tokenizer, folder: Path, base_model: str, base_model_hub_id: str | None, flow: str, run_id: str
) -> Path:
    """The folder that gets published: the trained adapter only (never a frozen reference copy), its
    tokenizer, and `ftllm.json` saying how to rebuild its base offline (`model.name` as configured)."""
    model.save_pretrained(folder, safe_serialization=True, selected_adapters=["default"])
    tokenizer.save_pretrained(folder)
    (folder / RECORD).write_text(
        json.dumps(
            {"base_model": base_model, "base_model_hub_id": base_model_hub_id, "flow": flow, "mlflow_run_id": run_id},
            indent=2,
        )
    )
    return folder


def check_adapter_dir(adapter_dir: Path) -> Path:
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise PublishError(f"adapter folder {adapter_dir} does not exist")
    missing = [n for n in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) if not (adapter_dir / n).is_file()]
    if missing:
        raise PublishError(
            f"adapter folder {adapter_dir} has no {', '.join(missing)} "
            "(save it with model.save_pretrained(folder) first)"
        )
    return adapter_dir


def _without_local_paths(value: Any, where: str, dropped: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without_local_paths(v, f"{where}.{k}", dropped) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_local_paths(v, f"{where}[{i}]", dropped) for i, v in enumerate(value)]
    if is_local_path(value):
        dropped.append(where)
        return None
    return value


def stage(adapter_dir: Path, card: str, hub_base: str | None, clear_local_paths: bool) -> Path:
    """A copy of the adapter folder with the card as README.md (PEFT writes its own, with local paths).

    With `clear_local_paths` (a target whose copy leaves this machine), `base_model_name_or_path` in
    adapter_config.json becomes the base's Hub id, and any other local path in the small JSON files
    (the flows' own records included) is cleared: a path on this machine is useless to anyone else
    and leaks a user's disk layout.
    """
    staging = Path(tempfile.mkdtemp(prefix="ftllm-publish-"))
    shutil.copytree(adapter_dir, staging, dirs_exist_ok=True)
    (staging / "README.md").write_text(card, encoding="utf-8")
    if not clear_local_paths:
        return staging
    config_path = staging / ADAPTER_CONFIG
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    if hub_base:
        adapter_config["base_model_name_or_path"] = hub_base
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    dropped: list[str] = []
    for path in sorted(staging.glob("*.json")):
        if path.name in TOKENIZER_VOCABULARIES:  # token strings, not settings (a token may well be "/usr")
            continue
        original = json.loads(path.read_text(encoding="utf-8"))
        cleaned = _without_local_paths(original, path.name, dropped)
        if cleaned != original:
            path.write_text(json.dumps(cleaned, indent=2) + "\n", encoding="utf-8")
    if dropped:
        log.warning(
            "local paths cleared from what goes to the Hub: %s%s",
            ", ".join(dropped),
            "" if hub_base else " (set model.hub_id to record the base model's Hub id)",
        )
    return staging


def name_base_portably(folder: Path) -> str | None:
    """Point adapter_config.json at a base model another machine can resolve: the `pypi:` name or Hub
    id that `ftllm.json` records (that file keeps the name as configured). Returns the name written;
    None, with a warning, when the base is known only by a local folder, which then stays.
    """
    record = folder / RECORD
    recorded = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    base, hub_id = recorded.get("base_model"), recorded.get("base_model_hub_id")
    portable = base if isinstance(base, str) and (is_pypi_model(base) or is_hub_id(base)) else hub_id
    if not portable:
        log.warning(
            "adapter_config.json keeps the local base folder %s: the registered model loads only where it "
            "exists (set model.hub_id, or load it with model_config={'base_model': ...})",
            base,
        )
        return None
    config_path = folder / ADAPTER_CONFIG
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = portable
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return portable
