#!/usr/bin/env bash
# The local stack: a Prefect server, a process work pool with its worker, and an MLflow tracking
# server, all bound to 127.0.0.1, all state under $FTLLM_DATA_DIR/stack (default .ftllm/stack).
#
#   bash deployments/stack.sh start     # start everything (idempotent), wait until healthy
#   eval "$(bash deployments/stack.sh env)"   # point this shell's prefect/mlflow CLIs at it
#   bash deployments/stack.sh status
#   bash deployments/stack.sh stop
#
# Ports: FTLLM_PREFECT_PORT (4200), FTLLM_MLFLOW_PORT (5000). Work pool: ftllm-local (process).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${FTLLM_DATA_DIR:-$ROOT/.ftllm}"
STACK="$DATA/stack"
PREFECT_PORT="${FTLLM_PREFECT_PORT:-4200}"
MLFLOW_PORT="${FTLLM_MLFLOW_PORT:-5000}"
POOL="ftllm-local"  # prefect.yaml names it
PY="${FTLLM_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
BIN="$(dirname "$PY")"

export FTLLM_DATA_DIR="$DATA"
export FTLLM_PROJECT_DIR="$ROOT"
export PREFECT_HOME="$STACK/prefect"
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
export PREFECT_API_DATABASE_CONNECTION_URL="sqlite+aiosqlite:///$STACK/prefect/prefect.db"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

env_lines() {
  cat <<ENV
export FTLLM_DATA_DIR="$DATA"
export FTLLM_PROJECT_DIR="$ROOT"
export PREFECT_HOME="$STACK/prefect"
export PREFECT_API_URL="$PREFECT_API_URL"
export MLFLOW_TRACKING_URI="$MLFLOW_TRACKING_URI"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
ENV
}

alive() { [ -f "$STACK/$1.pid" ] && kill -0 "$(cat "$STACK/$1.pid")" 2>/dev/null; }

launch() {  # name, command...: a new session so that stop can end the whole process group
  local name="$1"; shift
  if alive "$name"; then echo "$name already running (pid $(cat "$STACK/$name.pid"))"; return; fi
  setsid "$@" >"$STACK/$name.log" 2>&1 < /dev/null &
  echo $! >"$STACK/$name.pid"
  echo "$name started (pid $!, log $STACK/$name.log)"
}

wait_http() {  # name, url, seconds
  local deadline=$((SECONDS + $3))
  until curl -fsS -o /dev/null "$2" 2>/dev/null; do
    if ! alive "$1"; then echo "$1 exited; last lines of $STACK/$1.log:" >&2; tail -20 "$STACK/$1.log" >&2; exit 1; fi
    if [ $SECONDS -ge $deadline ]; then echo "$1 not healthy after $3 s ($2)" >&2; exit 1; fi
    sleep 0.5
  done
}

start() {
  mkdir -p "$STACK/prefect" "$DATA/mlartifacts"
  launch prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
  launch mlflow-server "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$DATA/mlflow.db" --artifacts-destination "$DATA/mlartifacts"
  wait_http prefect-server "$PREFECT_API_URL/health" 120
  wait_http mlflow-server "$MLFLOW_TRACKING_URI/health" 120
  "$BIN/prefect" work-pool inspect "$POOL" >/dev/null 2>&1 || "$BIN/prefect" work-pool create "$POOL" --type process >/dev/null
  # prefect.yaml's GPU deployments target gpu-k8s (docs/cluster.md): the pool exists here so that
  # `prefect deploy --all` succeeds; with no Kubernetes worker, its runs wait in the queue.
  "$BIN/prefect" work-pool inspect gpu-k8s >/dev/null 2>&1 || "$BIN/prefect" work-pool create gpu-k8s \
    --type kubernetes --base-job-template "$ROOT/deployments/k8s/base-job-template.json" >/dev/null
  (cd "$ROOT" && launch prefect-worker "$BIN/prefect" worker start --pool "$POOL" --type process)
  echo "Prefect UI: http://127.0.0.1:$PREFECT_PORT   MLflow UI: $MLFLOW_TRACKING_URI   work pool: $POOL"
  echo "Next: eval \"\$(bash deployments/stack.sh env)\" && prefect deploy --all"
}

stop_one() {
  local name="$1"
  alive "$name" || { rm -f "$STACK/$name.pid"; return; }
  local pid; pid="$(cat "$STACK/$name.pid")"
  # A process worker passes the first signal on to its flow runs and only stops on the second.
  kill -TERM -- "-$pid" 2>/dev/null || true; sleep 1; kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$STACK/$name.pid"
  echo "$name stopped"
}

stop() { stop_one prefect-worker; stop_one prefect-server; stop_one mlflow-server; }

status() {
  for name in prefect-server mlflow-server prefect-worker; do
    if alive "$name"; then echo "$name: running (pid $(cat "$STACK/$name.pid"))"; else echo "$name: stopped"; fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) env_lines ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
