"""`export.*`: the GGUF / Ollama export of an adapter, for the export-gguf flow and the training flows."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.core.config import option, require
from tasks.publishing.export.merged_gguf import FILE_TYPES


@dataclass
class ExportOptions:
    gguf: bool = option(False, help="training flows: also export the published adapter as GGUF + Ollama Modelfile")
    base_gguf: str | None = option(
        None,
        help="the base model as GGUF (pypi:PACKAGE/FILE.gguf or a .gguf file); none: the adapter's base model, "
        "when that is a GGUF",
    )
    merged: list[str] = option(
        [], help=f"also write the merged model as GGUF in these file types ({' | '.join(FILE_TYPES)})"
    )
    verify: bool = option(True, help="check llama.cpp's greedy tokens against transformers' on 5 prompts")
    verify_tokens: int = option(32, help="greedy tokens compared per prompt")
    min_agreement: float = option(0.95, help="the export fails below this share of agreeing tokens")
    temperature: float = option(0.2, help="Modelfile PARAMETER temperature")
    top_p: float = option(0.9, help="Modelfile PARAMETER top_p")
    top_k: int = option(50, help="Modelfile PARAMETER top_k")
    repeat_penalty: float = option(1.1, help="Modelfile PARAMETER repeat_penalty")
    num_ctx: int = option(2048, help="Modelfile PARAMETER num_ctx (context tokens)")

    def __post_init__(self) -> None:
        for index, file_type in enumerate(self.merged):
            require(
                file_type in FILE_TYPES,
                f"export.merged[{index}]",
                f"{file_type!r} is not one of {', '.join(FILE_TYPES)}",
            )
        require(
            0.0 <= self.min_agreement <= 1.0, "export.min_agreement", f"must be in [0, 1], got {self.min_agreement}"
        )
        require(self.verify_tokens >= 1, "export.verify_tokens", f"must be at least 1, got {self.verify_tokens}")

    def parameters(self) -> dict[str, object]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repeat_penalty": self.repeat_penalty,
            "num_ctx": self.num_ctx,
        }
