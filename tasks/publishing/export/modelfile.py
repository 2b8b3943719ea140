"""An Ollama Modelfile: FROM the base GGUF, ADAPTER the adapter GGUF, the chat template and sampling defaults.

Ollama's TEMPLATE is a Go template, not the Jinja template a tokenizer carries: ChatML models
(SmolLM2, Qwen2) get ChatML written out; for others Ollama derives it from the base GGUF's own
chat template, so TEMPLATE is left out.
"""

from __future__ import annotations

CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def modelfile(base: str, adapter: str | None, chat_template: str | None, parameters: dict[str, object]) -> str:
    """The Modelfile text; `base` and `adapter` are paths as Ollama reads them (relative ones: to the file)."""
    lines = [f"FROM {base}"]
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    chatml = bool(chat_template) and "<|im_start|>" in chat_template
    if chatml:
        lines.append(f'TEMPLATE """{CHATML_TEMPLATE}"""')
        lines.append('PARAMETER stop "<|im_end|>"')
    for name, value in parameters.items():
        lines.append(f"PARAMETER {name} {value}")
    return "\n".join(lines) + "\n"
