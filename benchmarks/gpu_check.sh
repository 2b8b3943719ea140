#!/usr/bin/env bash
# The GPU measurement of the training fast path with the project's own benchmark, in one call.
#
# Here (with the project's venv), once:   benchmarks/gpu_check.sh wheels [EXTRA==VERSION ...]
#   downloads the Python packages the GPU image lacks into .ftllm/wheels (git-ignored).
# Here, before a lease:                   benchmarks/gpu_check.sh --cpu     (or GPU_CHECK_REHEARSAL=1)
#   the rehearsal: the same steps on a tiny random model on this CPU, in bf16, then the check that
#   every result file is in $OUT (default: a fresh temporary folder).
# There (device tool), one call:          run(command="bash benchmarks/gpu_check.sh", carry=[".ftllm/wheels"], timeout_s=540)
#   installs the wheels beside the image's torch, checks every import and the version constraints of
#   the packages it needs first (a failure ends the run within a minute, saying what to carry), then
#   runs the benchmark on a randomly initialised Qwen2.5-1.5B shape (no download), all within a total
#   budget of 8 minutes, and writes train_throughput_gpu_qwen2.5-1.5b.{json,md}, the log and the
#   tail of stderr into $OUT. Copy those into benchmarks/results/ here and commit them.
#
# No torch.compile run: packed padding-free batches change length every step and carry per-batch
# integers (cu_seq_lens, max_length_q/k), so torch.compile recompiles step after step up to its cache
# limit, and the timing would measure compilation. `--set torch_compile=true` runs it by hand.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(transformers==5.24.0 trl==1.16.0 datasets==5.2.0 peft==0.21.2 tokenizers==0.23.3 dill==0.4.1
  multiprocess==0.70.19 liger-kernel==0.8.5 regex==2026.11.19 fsspec==2026.9.0)

if [[ "${1:-}" == "wheels" ]]; then
  shift
  mkdir -p .ftllm/wheels
  # The image has torch, triton, accelerate, huggingface-hub, pyarrow, pandas, xxhash; not these.
  # pyarrow only when the preflight there asks for it: its wheel (~50 MB) and these (~21 MB) exceed
  # one 64 MiB carry, so it goes alone into /tmp/site in a first call, and this script in the next.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .ftllm/wheels "${WHEELS[@]}" "$@"
  ls -la .ftllm/wheels
  exit 0
fi

if [[ "${1:-}" == "--cpu" || "${GPU_CHECK_REHEARSAL:-0}" == 1 ]]; then
  MODE=rehearsal DEVICE=cpu SHAPE=tiny-qwen2 IMPORTS=""
  PYTHON=python3
  [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python
  OUT="${OUT:-$(mktemp -d)}"
  BENCH_ARGS=(--precision bf16 --lengths lognormal:24 --rows 200 --max-length 128 --batch-size 8
    --packed-batch-size 4 --steps 2 --warmup 1 --rounds 2 --check-steps 2)
else
  MODE=gpu DEVICE=cuda SHAPE=qwen2.5-1.5b IMPORTS="liger-kernel:liger_kernel.transformers"
  PYTHON=python3
  OUT="${OUT:-benchmarks/results}"
  # The issue's setups on its shape and lengths: notebook-style baseline (8 padded rows, checkpointing),
  # the project's default (packed 4096-token rows, Liger, checkpointing by memory) and its memory-saving mode.
  BENCH_ARGS=(--lengths lognormal:160 --rows 3000 --max-length 4096 --batch-size 8 --packed-batch-size 4
    --steps 8 --warmup 2 --rounds 1 --check-steps 3)
fi
# The whole run, on a GPU: the device call's timeout_s leaves a minute beyond it.
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
[[ $MODE == rehearsal ]] && BUDGET_S=${GPU_CHECK_BUDGET_S:-900} # a shared CPU is slower than a lease
NAME="${MODE}_${SHAPE}"
mkdir -p "$OUT"
LOG="$OUT/train_throughput_${MODE}.log"
STDERR=$(mktemp)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
export FTLLM_DATA_DIR="${FTLLM_DATA_DIR:-/tmp/ftllm}"
remaining() { echo $((BUDGET_S - SECONDS)); }

if [[ $MODE == gpu ]]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .ftllm/wheels/*.whl || {
    echo "wheel install failed: run 'benchmarks/gpu_check.sh wheels' here first and carry .ftllm/wheels" | tee "$LOG"
    exit 1
  }
  export PYTHONPATH=/tmp/site
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$LOG"
fi

# Every import the run needs, and every version constraint of the packages it carries (transformers
# checks regex at import; datasets needs pyarrow>=24 and fsspec<=2026.9.0): a mismatch ends the run now.
timeout 120 "$PYTHON" - "$DEVICE" transformers:transformers trl:trl peft:peft datasets:datasets \
  accelerate:accelerate tokenizers:tokenizers $IMPORTS <<'EOF' 2>&1 | tee -a "$LOG"
import importlib
import importlib.metadata as metadata
import importlib.util
import sys

from packaging.requirements import Requirement

device, wanted = sys.argv[1], [spec.split(":") for spec in sys.argv[2:]]
problems = []
for distribution, module in wanted:
    try:
        requirements = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        problems.append(f"{distribution} is not installed")
        continue
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            found = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{distribution} needs {requirement}: not installed")
            continue
        if not requirement.specifier.contains(found, prereleases=True):
            problems.append(f"{distribution} needs {requirement}: found {found}")
for module in ["torch", *(module for _, module in wanted), "tasks.training.trainer", "benchmarks.train_throughput"]:
    try:
        importlib.import_module(module)
    except Exception as error:
        problems.append(f"import {module}: {type(error).__name__}: {error}")
import torch

if device == "cuda" and not torch.cuda.is_available():
    problems.append("torch sees no CUDA device")
installed = {d: metadata.version(d) for d in ("torch", *(d for d, _ in wanted)) if importlib.util.find_spec(d.replace("-", "_"))}
print("versions:", ", ".join(f"{d} {v}" for d, v in installed.items()))
if problems:
    print("preflight failed (carry the named versions as wheels):", *problems, sep="\n  ")
    sys.exit(1)
print("preflight passed")
EOF
if [[ $? -ne 0 ]]; then
  echo "aborted before the benchmark: see the preflight above" | tee -a "$LOG"
  exit 2
fi

echo "== $NAME ($(remaining) s left of ${BUDGET_S} s)" | tee -a "$LOG"
limit=$(($(remaining) - 20)) # what is left, less the time to write the tail and check the files
if ((limit < 60)); then
  echo "aborted: ${limit} s left for the benchmark" | tee -a "$LOG"
  exit 2
fi
timeout --kill-after=10 "$limit" "$PYTHON" -m benchmarks.train_throughput --device "$DEVICE" \
  --shape "$SHAPE" --setups baseline,project,project-ckpt --name "$NAME" --out "$OUT" "${BENCH_ARGS[@]}" \
  2>"$STDERR" | tee -a "$LOG"
status=$?
tail -n 60 "$STDERR" >"$OUT/train_throughput_${MODE}.stderr.tail"
rm -f "$STDERR"
[[ $status -eq 0 ]] || echo "the benchmark failed (exit $status): see train_throughput_${MODE}.stderr.tail" | tee -a "$LOG"

# The torchrun launcher with one process against the in-process train step (benchmarks/train_distributed.py),
# on generated rows and a saved random model of the benchmark's shape (nothing downloaded): the launcher's own cost.
limit=$(($(remaining) - 20))
if ((limit >= 90)); then
  echo "== launcher: torchrun-1 vs inprocess ($(remaining) s left)" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$PYTHON" -m benchmarks.train_distributed --device "$DEVICE" \
    --setups inprocess,torchrun-1 --steps 10 --out "$OUT" --generated "$FTLLM_DATA_DIR/launcher-check" \
    --shape "$SHAPE" 2>"$OUT/train_distributed_${MODE}.stderr.tail" | tee -a "$LOG" ||
    echo "the launcher check failed: see train_distributed_${MODE}.stderr.tail" | tee -a "$LOG"
else
  echo "no time left for the launcher check (${limit} s)" | tee -a "$LOG"
fi

missing=()
for file in "train_throughput_$NAME.json" "train_throughput_$NAME.md" "train_throughput_${MODE}.log"; do
  [[ -s "$OUT/$file" ]] || missing+=("$file")
done
if ((${#missing[@]})); then
  echo "missing from $OUT: ${missing[*]}" | tee -a "$LOG"
  exit 1
fi
echo "every result file is there, in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exit "$status"
