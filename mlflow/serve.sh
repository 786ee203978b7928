#!/usr/bin/env bash
# Start the MLflow UI over trtflow's embedded store (sqlite + artifact dir under .trtflow/).
# One worker and no job executor: 2 processes, ready in ~16 s on this machine (DESIGN.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
port="${MLFLOW_PORT:-5000}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec "$root/.venv/bin/mlflow" server \
  --backend-store-uri "sqlite:///$root/.trtflow/mlflow.db" \
  --default-artifact-root "$root/.trtflow/mlartifacts" \
  --host 127.0.0.1 --port "$port" --workers 1
