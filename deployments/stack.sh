#!/usr/bin/env bash
# The local stack: a Prefect server, a process work pool with its worker, and an MLflow tracking
# server, all bound to 127.0.0.1, all state under $FTLLM_DATA_DIR/stack (default .ftllm/stack).
#
#   bash deployments/stack.sh start     # start everything (idempotent), wait until healthy
#   eval "$(bash deployments/stack.sh env)"   # point this shell's prefect/mlflow CLIs at it
#   bash deployments/stack.sh status
#   bash deployments/stack.sh stop
#
#   bash deployments/stack.sh start-shared  # the shared stack: the above, plus PostgreSQL, an S3
#                                           # server (moto), a Milvus server; MLflow then keeps its
#                                           # runs in PostgreSQL and its artifacts in S3
#   eval "$(bash deployments/stack.sh env-shared)"
#
# Ports: FTLLM_PREFECT_PORT (4200), FTLLM_MLFLOW_PORT (5000), FTLLM_PG_PORT (5432),
# FTLLM_S3_PORT (9000); Milvus: 19530 (its etcd: 2379). Work pool: ftllm-local (process).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${FTLLM_DATA_DIR:-$ROOT/.ftllm}"
STACK="$DATA/stack"
PREFECT_PORT="${FTLLM_PREFECT_PORT:-4200}"
MLFLOW_PORT="${FTLLM_MLFLOW_PORT:-5000}"
PG_PORT="${FTLLM_PG_PORT:-5432}"
S3_PORT="${FTLLM_S3_PORT:-9000}"
PG_BIN="${FTLLM_PG_BIN:-/usr/lib/postgresql/15/bin}"
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

shared_env_lines() {
  env_lines
  cat <<ENV
export PGPASSWORD="\$(cat "$STACK/postgres/password")"
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:$S3_PORT"
export AWS_ACCESS_KEY_ID=ftllm-local AWS_SECRET_ACCESS_KEY=ftllm-local AWS_DEFAULT_REGION=us-east-1
# pdf-index / rag-query: --set store.uri=http://127.0.0.1:19530 --set store.records=postgresql://ftllm@127.0.0.1:$PG_PORT/ftllm_rag
# lora-finetune / dpo-finetune: --set train.checkpoint_uri=s3://ftllm/checkpoints
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

# PostgreSQL refuses to run as root: as root, it runs as the `postgres` user Debian creates.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start_postgres() {
  local dir="$STACK/postgres"
  mkdir -p "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    [ -f "$dir/password" ] || (umask 077; "$PY" -c 'import secrets; print(secrets.token_urlsafe(18))' >"$dir/password")
    [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U ftllm --auth=scram-sha-256 --pwfile="$dir/password" -E UTF8 >"$dir/initdb.log"
  fi
  if as_pg "$PG_BIN/pg_ctl" status -D "$dir/data" >/dev/null 2>&1; then echo "postgres already running"; else
    as_pg "$PG_BIN/pg_ctl" start -D "$dir/data" -l "$dir/server.log" -w -t 120 \
      -o "-p $PG_PORT -k $dir -c listen_addresses=127.0.0.1" >/dev/null
    echo "postgres started (port $PG_PORT, log $dir/server.log)"
  fi
  export PGPASSWORD; PGPASSWORD="$(cat "$dir/password")"
  for db in mlflow ftllm_rag; do
    "$PY" - "$PG_PORT" "$db" <<'PY'
import sys, psycopg
with psycopg.connect(f"postgresql://ftllm@127.0.0.1:{sys.argv[1]}/postgres", autocommit=True) as db:
    if not db.execute("SELECT 1 FROM pg_database WHERE datname=%s", (sys.argv[2],)).fetchone():
        db.execute(f'CREATE DATABASE "{sys.argv[2]}"')
PY
  done
}

start_shared() {
  mkdir -p "$STACK/prefect" "$STACK/milvus"
  start_postgres
  export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:$S3_PORT"
  export AWS_ACCESS_KEY_ID=ftllm-local AWS_SECRET_ACCESS_KEY=ftllm-local AWS_DEFAULT_REGION=us-east-1
  # moto keeps its buckets in memory: a restart of the stack starts with an empty S3.
  launch s3-server "$PY" -m moto.server -H 127.0.0.1 -p "$S3_PORT"
  launch milvus-server "$BIN/milvus-server" --data "$STACK/milvus"
  wait_http s3-server "http://127.0.0.1:$S3_PORT/moto-api/" 60
  "$PY" -c 'import boto3; s3 = boto3.client("s3"); "ftllm" in [b["Name"] for b in s3.list_buckets()["Buckets"]] or s3.create_bucket(Bucket="ftllm")'
  launch prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
  launch mlflow-server "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "postgresql+psycopg://ftllm@127.0.0.1:$PG_PORT/mlflow" --artifacts-destination s3://ftllm/mlflow
  wait_http prefect-server "$PREFECT_API_URL/health" 120
  wait_http mlflow-server "$MLFLOW_TRACKING_URI/health" 180
  wait_http milvus-server "http://127.0.0.1:9091/healthz" 420
  "$BIN/prefect" work-pool inspect "$POOL" >/dev/null 2>&1 || "$BIN/prefect" work-pool create "$POOL" --type process >/dev/null
  (cd "$ROOT" && launch prefect-worker "$BIN/prefect" worker start --pool "$POOL" --type process)
  echo "PostgreSQL 127.0.0.1:$PG_PORT  S3 http://127.0.0.1:$S3_PORT  Milvus http://127.0.0.1:19530"
  echo "Prefect UI: http://127.0.0.1:$PREFECT_PORT   MLflow UI: $MLFLOW_TRACKING_URI"
  echo "Next: eval \"\$(bash deployments/stack.sh env-shared)\""
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

stop() {
  stop_one prefect-worker; stop_one prefect-server; stop_one mlflow-server
  stop_one s3-server; stop_one milvus-server
  if [ -f "$STACK/postgres/data/PG_VERSION" ] && as_pg "$PG_BIN/pg_ctl" status -D "$STACK/postgres/data" >/dev/null 2>&1; then
    as_pg "$PG_BIN/pg_ctl" stop -D "$STACK/postgres/data" -m fast -w >/dev/null && echo "postgres stopped"
  fi
}

status() {
  for name in prefect-server mlflow-server prefect-worker s3-server milvus-server; do
    if alive "$name"; then echo "$name: running (pid $(cat "$STACK/$name.pid"))"; else echo "$name: stopped"; fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) env_lines ;;
  start-shared) start_shared ;;
  env-shared) shared_env_lines ;;
  *) echo "usage: $0 start|stop|status|env|start-shared|env-shared" >&2; exit 2 ;;
esac
