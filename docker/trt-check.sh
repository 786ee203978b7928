#!/usr/bin/env bash
# `make trt-check` where TensorRT exists (docker/tensorrt.Dockerfile's image, an NVIDIA GPU):
# the tensorrt-marked tests, then a resnet18 INT8 and an FP8 TensorRT engine built and
# validated through trtflow's stages. Never run on this project's machines (docs/tensorrt.md).
set -euo pipefail
PY=${PYTHON:-python3}

$PY - <<'PYEOF'
import sys
import tensorrt
if not hasattr(tensorrt, "Builder"):
    sys.exit("trt-check: 'tensorrt' has no Builder: not NVIDIA TensorRT (a placeholder/stub)")
print("trt-check: TensorRT", tensorrt.__version__)
PYEOF

# 1. every tensorrt-marked test (they skip, saying why, only where tensorrt.Builder is missing)
$PY -m pytest -q -m tensorrt -rs tests/unit

# 2. resnet18 int8 and fp8 engines, through the same stages a run uses (no Prefect needed)
test -f data/resnet18/calibration.npz || $PY -m trtflow.cli prepare
mkdir -p build/trt-check
params=build/trt-check/resnet18_tensorrt.yaml
$PY - "$params" <<'PYEOF'
import sys
import yaml
base = yaml.safe_load(open("params/resnet18.yaml"))
targets = {"trt_int8": {"backend": "tensorrt", "device": "cuda", "precision": "int8"},
           "trt_fp8": {"backend": "tensorrt", "device": "cuda", "precision": "fp8"}}
params = {"model": base["model"], "data": base["data"], "targets": targets,
          "validate": base.get("validate", {})}
with open(sys.argv[1], "w") as f:
    yaml.safe_dump(params, f, sort_keys=False)
PYEOF
$PY -m trtflow.cli stage validate -p "$params" -t trt_int8
# TensorRT runs FP8 on compute capability 8.9 (Ada) and later
if $PY -c "import sys, torch; sys.exit(torch.cuda.get_device_capability() < (8, 9))"; then
    $PY -m trtflow.cli stage validate -p "$params" -t trt_fp8
else
    echo "trt-check: fp8 not built: this GPU is older than compute capability 8.9"
fi
echo "trt-check: done"
