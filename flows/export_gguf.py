"""`export-gguf`: a published adapter as GGUF for llama.cpp and Ollama, checked against transformers.

    fetch the adapter → export (adapter.gguf, Modelfile, merged-*.gguf) → token agreement → MLflow run

    python -m flows.export_gguf --set adapter=URI [--set "export.merged=[q8_0]"] [--set out=FOLDER]
    prefect deployment run export-gguf/export-gguf --param adapter=URI

URI is any publish URI the training flows print (docs/serving.md has examples) or an adapter folder.

The files land in MLflow (artifacts `gguf/` of a run in the `export-gguf` experiment) and, with
`out`, in that folder: `ollama create NAME -f OUT/Modelfile` then serves it.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from tasks import publishing
from tasks.core import tracking
from tasks.core.cli import run_cli
from tasks.core.config import load_config, option, require
from tasks.core.steps import step

FLOW = "export-gguf"


@dataclass
class ExportGgufConfig:
    """`export-gguf`: one published adapter in, GGUF files and a Modelfile out."""

    adapter: str = option("", help=f"the adapter: a publish URI ({publishing.ADAPTER_SCHEMES}) or a PEFT folder")
    out: str | None = option(None, help="also copy the files into this folder")
    export: publishing.ExportOptions = field(default_factory=publishing.ExportOptions)

    def __post_init__(self) -> None:
        require(bool(self.adapter.strip()), "adapter", "name the adapter to export (a publish URI or a folder)")


export_to_run = step(publishing.export_to_run, name="export_gguf")


@flow(name=FLOW, log_prints=False)
def export_gguf(adapter: str = "", config: str | None = None, overrides: list[str] | None = None):
    """Export one adapter; fails with the reason when llama.cpp cannot take it."""
    cfg = load_config(ExportGgufConfig, config, [*(overrides or []), *([f"adapter={adapter}"] if adapter else [])])
    with tracking.start_run(FLOW, cfg, run_name=cfg.adapter):
        if publishing.is_adapter_uri(cfg.adapter):
            with publishing.fetched_adapter(cfg.adapter) as folder:
                result = export_to_run(Path(folder), cfg.export)
        else:
            result = export_to_run(Path(cfg.adapter), cfg.export)
    if isinstance(result, str):
        raise publishing.UnsupportedExport(f"{cfg.adapter}: {result}")
    if cfg.out:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        for path in result.files():
            shutil.copy2(path, Path(cfg.out) / path.name)
    return result


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        export_gguf,
        ExportGgufConfig,
        None,
        argv,
        show=lambda result, args: print(
            f"{FLOW}: {', '.join(p.name for p in result.files())}; token agreement "
            f"{result.agreement.share if result.agreement else 'not checked'}"
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
