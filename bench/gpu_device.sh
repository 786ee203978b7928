#!/usr/bin/env bash
# The device side of bench/gpu.py (the lent GPU machine reaches no package registry).
#
# Here, once: ../shared/gpu/pack-ort-gpu.sh  (onnxruntime-gpu in .gpu/ort.0..5) and the
# wheels the device lacks in .whl/ (pydantic, pydantic_core, annotated-types,
# typing-inspection, onnxslim, polygraphy; see bench/gpu.py's docstring).
# Then device calls back to back (the machine is given back ~30 s after a call):
#   call k = 0..5, carry [".gpu/ort.k"]:      bash bench/gpu_device.sh part k
#   then, carry [".whl"] (first run only):    bash bench/gpu_device.sh run --models minilm ...
# A run writes gpu.json and log.txt under $OUT and prints the summary table last.
set -uo pipefail
case "${1:-}" in
part)
    k=$2
    mkdir -p /tmp/ortgpu/parts
    if [ -f ".gpu/ort.$k/name" ]; then cp ".gpu/ort.$k/name" /tmp/ortgpu/name; fi
    cp ".gpu/ort.$k/part" "/tmp/ortgpu/parts/part.$k" || exit 2
    echo "have parts: $(ls /tmp/ortgpu/parts | tr '\n' ' ')"
    name=$(cat /tmp/ortgpu/name 2>/dev/null || true)
    [ -n "$name" ] || exit 0
    cat /tmp/ortgpu/parts/part.* > "/tmp/ortgpu/$name"
    if python3 -m zipfile -t "/tmp/ortgpu/$name" >/dev/null 2>&1; then
        python3 -m pip install -q --no-deps --target /tmp/ortgpu/site "/tmp/ortgpu/$name" &&
            echo "onnxruntime-gpu installed"
    else
        rm -f "/tmp/ortgpu/$name"
        echo "wheel incomplete so far"
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
    ;;
run)
    shift
    if [ ! -d /tmp/ortgpu/site ]; then
        echo "onnxruntime-gpu is not on this machine: the six part calls must come first"
        exit 3
    fi
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || exit 4
    fi
    export PYTHONPATH=/tmp/ortgpu/site:/tmp/site PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.used,temperature.gpu,clocks.sm --format=csv,noheader
    timeout "${BENCH_TIMEOUT:-560}" python3 bench/gpu.py --out "$OUT" "$@" 2>&1 |
        tee "$OUT/log.txt" | grep -v -E "Warning|warnings.warn|symbolic shape|shape inference"
    ;;
*)
    echo "usage: bench/gpu_device.sh part K | run [bench/gpu.py args]"
    exit 2
    ;;
esac
