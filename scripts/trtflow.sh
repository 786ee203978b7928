#!/bin/sh
# trtflow for commands that do not inherit the venv on PATH (dvc.yaml's stages):
# the project's .venv interpreter when it exists, else python3 from PATH.
# `.venv/bin/dvc repro` runs each stage in a fresh shell whose PATH may lack .venv/bin.
root="${DVC_ROOT:-$(dirname "$0")/..}"
if [ -n "$TRTFLOW_PYTHON" ]; then
  python="$TRTFLOW_PYTHON"
elif [ -x "$root/.venv/bin/python" ]; then
  python="$root/.venv/bin/python"
else
  python=python3
fi
exec "$python" -m trtflow.cli "$@"
