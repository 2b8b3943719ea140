"""The model card (README.md) published with an adapter, and what in a config is fit for it.

Nothing in a card is a local path: a card travels to the Hub, and paths only leak a user's disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from tasks.core.config import flatten
from tasks.core.models import is_hub_id
from tasks.core.reporting import markdown_cell


def is_local_path(value: Any) -> bool:
    """A path on some machine's disk (absolute, ~, ./, file:, or an existing relative path), as
    opposed to a Hub id (ORG/NAME), a URL or a plain word."""
    if not isinstance(value, str) or len(value) < 2 or "\n" in value:
        return False
    if value.startswith(("/", "~", "./", "../", "file:")) or re.match(r"^[A-Za-z]:[\\/]", value):
        return True
    return os.sep in value and Path(value).exists()


def _public(value: Any) -> Any:
    """A config value fit for a public card: a local path becomes its last component."""
    if is_local_path(value):
        tail = Path(value.rstrip("/")).name or "path"  # of a file: URL too
        return f"<local>/{tail}"
    if isinstance(value, (list, tuple)):
        return [_public(v) for v in value]
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    return value


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return flatten(config)
    flat: dict[str, Any] = {}
    for key, value in (config or {}).items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _cell(value: Any) -> str:
    return markdown_cell(json.dumps(value) if isinstance(value, (list, dict)) else value)


def _format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return _cell(value)


def model_card(
    base_model_hub_id: str | None, dataset: str, config: dict, metrics: dict, mlflow_run_id: str | None, flow: str
) -> str:
    """README.md for an adapter: YAML front matter, what it was trained on, the config and metrics."""
    base = base_model_hub_id if is_hub_id(base_model_hub_id) else None
    front: dict[str, Any] = {}
    if base:
        front["base_model"] = base
    front["library_name"] = "peft"
    front["pipeline_tag"] = "text-generation"
    front["tags"] = ["peft", "lora", flow, "dpo" if "dpo" in flow else "sft", "finetuning-llm"]
    if base:
        front["tags"].insert(0, f"base_model:adapter:{base}")
    dataset_name = _public(dataset)
    if is_hub_id(dataset):
        front["datasets"] = [dataset]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", ""]
    title = f"LoRA adapter for {base}" if base else "LoRA adapter"
    lines += [
        f"# {title}",
        "",
        f"Trained by the `{flow}` flow of finetuning-llm on `{dataset_name}`"
        + (f", on top of [{base}](https://huggingface.co/{base})." if base else "."),
        "",
    ]
    lines += [
        "## Use it",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"base = AutoModelForCausalLM.from_pretrained({base or '<base model>'!r})",
        'model = PeftModel.from_pretrained(base, "<this repo or folder>")',
        "```",
        "",
    ]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {_cell(k)} | {_format_metric(v)} |" for k, v in sorted(metrics.items())]
        lines.append("")
    lines += ["## Training config", "", "| key | value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(_public(v))} |" for k, v in _flat(config).items()]
    lines.append("")
    lines += ["## Provenance", "", f"- flow: `{flow}`"]
    lines.append(f"- MLflow run id: `{mlflow_run_id}`" if mlflow_run_id else "- MLflow run id: none")
    lines.append("")
    return "\n".join(lines)


def card_base_model(card: str) -> str | None:
    """The `base_model:` of a card's YAML front matter, if it has one."""
    if not card.startswith("---"):
        return None
    parts = card.split("---", 2)
    try:
        front = yaml.safe_load(parts[1]) if len(parts) == 3 else None
    except yaml.YAMLError:
        return None
    base = front.get("base_model") if isinstance(front, dict) else None
    return base if isinstance(base, str) and is_hub_id(base) else None
