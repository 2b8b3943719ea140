"""`ftllm FLOW [options]`: every flow's command line under one name (the same as `python -m flows.FLOW`).

ftllm lora-finetune --config configs/lora_demo.yaml --set train.launcher=torchrun --set train.nproc_per_node=4
ftllm --list
"""

from __future__ import annotations

import importlib
import sys

# Flow name → the module whose `main(argv)` is that flow's command line.
FLOWS = {
    "lora-finetune": "flows.lora_finetune",
    "dpo-finetune": "flows.dpo_finetune",
    "pdf-index": "flows.pdf_index",
    "rag-query": "flows.rag_query",
    "rag-eval": "flows.rag_eval",
    "chat-app": "flows.chat_app",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "--list"):
        print("usage: ftllm FLOW [--config FILE] [--set key=value ...] [--help]\n\nflows:")
        for name, module in FLOWS.items():
            print(f"  {name:<14} python -m {module}")
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in FLOWS:
        print(f"ftllm: unknown flow {name!r}; one of: {', '.join(FLOWS)}", file=sys.stderr)
        return 2
    return importlib.import_module(FLOWS[name]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
