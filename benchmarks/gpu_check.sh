#!/usr/bin/env bash
# The GPU re-measurement of the issue's table with the project's own benchmark, in one go (~5 minutes of GPU).
#
# Here (with the project's venv), once:   benchmarks/gpu_check.sh wheels
#   downloads the Python packages the GPU image lacks into .ftllm/wheels (~20 MB, git-ignored).
# There (device tool), one call:          run(command="bash benchmarks/gpu_check.sh", carry=[".ftllm/wheels"], timeout_s=540)
#   installs them beside the image's torch, runs the benchmark on a randomly initialised Qwen2.5-1.5B
#   shape (no download), and writes benchmarks/results/train_throughput_gpu_*.{json,md} and a log into $OUT.
# Then copy $OUT's files into benchmarks/results/ here and commit them.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "wheels" ]]; then
  mkdir -p .ftllm/wheels
  # The image has torch 2.11, triton, accelerate, huggingface-hub 1.33, pyarrow, pandas, xxhash; not these.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .ftllm/wheels transformers==5.24.0 trl==1.16.0 datasets==5.2.0 peft==0.21.2 tokenizers==0.23.3 \
    dill==0.4.1 multiprocess==0.70.19 liger-kernel==0.8.5
  ls -la .ftllm/wheels
  exit 0
fi

OUT="${OUT:-benchmarks/results}"
LOG="$OUT/train_throughput_gpu.log"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .ftllm/wheels/*.whl \
  || { echo "wheel install failed: run 'benchmarks/gpu_check.sh wheels' here first and carry .ftllm/wheels"; exit 1; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1 \
  FTLLM_DATA_DIR=/tmp/ftllm TOKENIZERS_PARALLELISM=false
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, trl, peft, liger_kernel, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$LOG"

bench() {  # name, then benchmark arguments; each run is capped so one hang cannot eat the lease
  local name=$1; shift
  echo "== $name: $*" | tee -a "$LOG"
  timeout 240 python3 -m benchmarks.train_throughput --device cuda --name "$name" "$@" 2>>"$LOG.stderr" | tee -a "$LOG"
  cp "benchmarks/results/train_throughput_$name".{json,md} "$OUT/" 2>/dev/null || true
}

# The issue's setups on its shape and lengths: notebook-style baseline (8 padded rows, checkpointing),
# the project's default (packed 4096-token rows, Liger, checkpointing by memory) and its memory-saving mode.
bench gpu_qwen2.5-1.5b --shape qwen2.5-1.5b --lengths lognormal:160 --rows 3000 --max-length 4096 \
  --batch-size 8 --packed-batch-size 4 --steps 8 --warmup 2 --rounds 1 --check-steps 3 \
  --setups baseline,project,project-ckpt
# What torch.compile adds on top of the default (compilation is in the warm-up steps).
bench gpu_qwen2.5-1.5b_compile --shape qwen2.5-1.5b --lengths lognormal:160 --rows 3000 --max-length 4096 \
  --batch-size 8 --packed-batch-size 4 --steps 8 --warmup 3 --rounds 1 --check-steps 0 \
  --setups baseline,project --set torch_compile=true
tail -n 40 "$LOG.stderr" > "$OUT/train_throughput_gpu.stderr.tail" 2>/dev/null || true
