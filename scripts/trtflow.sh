#!/bin/sh
# trtflow for commands that do not inherit the venv on PATH (dvc.yaml's stages):
# `.venv/bin/dvc repro` runs each stage in a fresh shell whose PATH may lack .venv/bin.
# Runs the project's .venv console script when it exists ($TRTFLOW_PYTHON -m trtflow.cli
# if set), else python3 from PATH. The console script, not `python -m` from the project
# directory: the same installed trtflow as `trtflow run`, so the same bytes (the ONNX
# export records the source paths of the modules it traced).
root="${DVC_ROOT:-$(dirname "$0")/..}"
if [ -n "$TRTFLOW_PYTHON" ]; then
  exec "$TRTFLOW_PYTHON" -m trtflow.cli "$@"
elif [ -x "$root/.venv/bin/trtflow" ]; then
  exec "$root/.venv/bin/trtflow" "$@"
else
  exec python3 -m trtflow.cli "$@"
fi
