"""Export an adapter for llama.cpp and Ollama: a GGUF LoRA adapter, an Ollama Modelfile, optionally merged GGUFs.

`export_gguf(adapter_dir, out_dir, options)` writes the files, checks them with llama.cpp against
transformers, and returns a `GgufExport`; an adapter that cannot be written for llama.cpp raises
`UnsupportedExport` with the reason.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tasks.core import tracking
from tasks.core.models import gguf_file, is_pypi_model, load_tokenizer, model_cache_dir, resolve_model_path
from tasks.publishing.export.agreement import PROMPTS, Agreement, token_agreement
from tasks.publishing.export.config import ExportOptions
from tasks.publishing.export.gguf_adapter import UnsupportedExport, read_lora, write_gguf_adapter
from tasks.publishing.export.merged_gguf import write_merged_gguf
from tasks.publishing.export.modelfile import modelfile

log = logging.getLogger(__name__)

ADAPTER_GGUF = "adapter.gguf"
MODELFILE = "Modelfile"


@dataclass
class GgufExport:
    folder: Path
    base_model: str
    base_gguf: Path
    adapter_gguf: Path
    modelfile: Path
    merged: dict[str, Path] = field(default_factory=dict)
    agreement: Agreement | None = None
    seconds: float = 0.0

    def files(self) -> list[Path]:
        return [self.adapter_gguf, self.modelfile, *self.merged.values()]


def _base_model(adapter_dir: Path) -> str:
    manifest = adapter_dir / "ftllm.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())["base_model"]
    return json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]


def _base_gguf(base_model: str, options: ExportOptions) -> Path:
    name = options.base_gguf or base_model
    if not (is_pypi_model(name) or name.endswith(".gguf")):
        raise UnsupportedExport(
            f"the base model {base_model!r} is no GGUF: set export.base_gguf to its GGUF (pypi:PACKAGE/FILE.gguf or "
            "a .gguf file), which Ollama's FROM and llama.cpp load"
        )
    return gguf_file(name, "export.base_gguf")


def f32_base(base_gguf: Path) -> Path:
    """The base GGUF's weights as f32, written once into the model cache (what transformers computes with)."""
    target = model_cache_dir() / f"{base_gguf.stem}.f32.gguf"
    if not target.is_file():
        partial = target.with_name(target.name + ".partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        write_merged_gguf(base_gguf, None, partial, "f32")
        partial.rename(target)  # atomic: a crash mid-write never leaves a half file in use
    return target


def export_gguf(adapter_dir: Path, out_dir: Path, options: ExportOptions) -> GgufExport:
    """Write adapter.gguf, the Modelfile (and merged-*.gguf) into `out_dir`, then check them with llama.cpp."""
    started = time.monotonic()
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    base_model = _base_model(adapter_dir)
    base_path = resolve_model_path(base_model)  # the model transformers trained the adapter on
    lora = read_lora(adapter_dir, json.loads((Path(base_path) / "config.json").read_text()))
    base_gguf = _base_gguf(base_model, options)
    out_dir.mkdir(parents=True, exist_ok=True)
    adapter_gguf = write_gguf_adapter(lora, out_dir / ADAPTER_GGUF).path
    merged = {t: write_merged_gguf(base_gguf, lora, out_dir / f"merged-{t}.gguf", t) for t in options.merged}
    # Ollama reads ADAPTER relative to the Modelfile; the base stays where it is (it is no output of the run).
    template = getattr(load_tokenizer(base_path), "chat_template", None)
    text = modelfile(str(base_gguf), f"./{ADAPTER_GGUF}", template, options.parameters())
    (out_dir / MODELFILE).write_text(text)
    result = GgufExport(out_dir, base_model, base_gguf, adapter_gguf, out_dir / MODELFILE, merged)
    if options.verify:
        result.agreement = token_agreement(
            base_path, adapter_dir, f32_base(base_gguf), adapter_gguf, PROMPTS, options.verify_tokens
        )
        if result.agreement.share < options.min_agreement:
            raise UnsupportedExport(
                f"llama.cpp agrees with transformers on {result.agreement.share:.1%} of greedy tokens "
                f"(per prompt {result.agreement.per_prompt}), below export.min_agreement {options.min_agreement:.0%}"
            )
    result.seconds = round(time.monotonic() - started, 1)
    return result


def export_to_run(adapter_dir: Path, options: ExportOptions) -> GgufExport | str:
    """Export into the active MLflow run: files under artifacts `gguf/`, the outcome in tags `export.gguf.*`.

    An adapter llama.cpp cannot take (or files it does not answer like transformers with) is recorded
    and returned as the reason: the adapter's publish does not depend on its export.
    """
    with tempfile.TemporaryDirectory() as scratch:
        try:
            result = export_gguf(adapter_dir, Path(scratch) / "gguf", options)
        except (UnsupportedExport, RuntimeError) as error:
            reason = f"{type(error).__name__}: {error}"
            log.warning("GGUF export failed (the published adapter is unaffected): %s", reason)
            tracking.set_tags({"export.gguf.status": "failed", "export.gguf.reason": reason[:5000]})
            return reason
        tracking.log_artifacts(result.folder, "gguf")
    tags = {"export.gguf.status": "exported", "export.gguf.files": ", ".join(sorted(p.name for p in result.files()))}
    if result.agreement:
        tags["export.gguf.token_agreement"] = str(result.agreement.share)
        tracking.log_metrics({"gguf_token_agreement": result.agreement.share})
    tracking.set_tags(tags)
    return result


__all__ = ["ExportOptions", "GgufExport", "UnsupportedExport", "export_gguf", "export_to_run"]
