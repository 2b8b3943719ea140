#!/usr/bin/env bash
# One command: set up, then fine-tune SmolLM2-135M with LoRA on the demo data, track it in the
# embedded MLflow store, publish it to the embedded MLflow Model Registry, reload and verify it.
# Extra arguments go to the flow, e.g.: bash scripts/quickstart.sh --set train.max_steps=100
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m flows.lora_finetune --config configs/lora_demo.yaml "$@"
