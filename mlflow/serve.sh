#!/usr/bin/env bash
# Start the MLflow UI over trtflow's tracking store: the project's sqlite file and artifact
# directory under .trtflow/, or the ones trtflow itself would use when MLFLOW_TRACKING_URI
# (a sqlite:/// URI) and TRTFLOW_MLFLOW_ARTIFACTS are set (the tests' session store).
# One worker and no job executor: 2 processes, ready in ~16 s on this machine (DESIGN.md).
# Environment: MLFLOW_PORT (default 5000), MLFLOW_HOST (default 127.0.0.1), PYTHON (default
# the project's .venv).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
state="$root/.trtflow"
port="${MLFLOW_PORT:-5000}"
host="${MLFLOW_HOST:-127.0.0.1}"
python="${PYTHON:-$root/.venv/bin/python}"
backend="sqlite:///$state/mlflow.db"
case "${MLFLOW_TRACKING_URI:-}" in
  sqlite:///*) backend="$MLFLOW_TRACKING_URI" ;;
  http://*|https://*)
    echo "MLFLOW_TRACKING_URI is already a server ($MLFLOW_TRACKING_URI): open that one," \
         "or unset it to serve the project's store" >&2
    exit 2 ;;
esac
artifacts="${TRTFLOW_MLFLOW_ARTIFACTS:-$state/mlartifacts}"
mkdir -p "$state" "$artifacts"
echo "MLflow UI: http://$host:$port  (store: $backend, artifacts: $artifacts)" >&2
echo "  each model's engines: the address \`trtflow run\` prints (?viewStateShareKey=trtflow)" >&2
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
export DO_NOT_TRACK="${DO_NOT_TRACK:-1}"  # no usage telemetry (trtflow's CLI does the same)
exec "$python" -m mlflow server \
  --backend-store-uri "$backend" \
  --default-artifact-root "$artifacts" \
  --host "$host" --port "$port" --workers 1
