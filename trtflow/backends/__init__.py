"""Engine backends behind one small interface.

`build(model_path, target, out_dir) -> dict` writes an engine directory;
`load(engine_dir) -> Engine`; `Engine.run(inputs) -> dict[name, array]`.
One module per backend; optional libraries are imported inside that module.

Routes by (backend, device): onnxruntime/cpu (onnxruntime_backend), onnxruntime/cuda
and onnxruntime-tensorrt/cuda (ort_cuda: ORT's CUDA and TensorRT providers),
tensorrt/cuda (tensorrt_backend: the TensorRT 10/11 Python API).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trtflow.errors import BuildError
from trtflow.params import Target


class Engine(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def build_engine(model_path: Path, target: Target, out_dir: Path,
                 scales: dict[str, float] | None = None,
                 cpu_flags: list[str] | None = None,
                 float_layers: list[str] | None = None,
                 calibration_dir: Path | None = None) -> dict[str, Any]:
    """Build an engine; an int8 target gets `scales` (tensor -> amax) from calibration
    and, for TensorRT, the calibrate stage's directory (model.qdq.onnx, calibration.cache)."""
    if target.precision == "int8" and scales is None:
        raise BuildError("an int8 target needs calibrated scales (the calibrate stage)")
    if target.device == "cuda" and target.backend in ("onnxruntime", "onnxruntime-tensorrt"):
        from trtflow.backends import ort_cuda

        return ort_cuda.build(model_path, target, out_dir, scales, float_layers,
                              calibration_dir)
    if target.backend == "tensorrt":
        from trtflow.backends import tensorrt_backend

        return tensorrt_backend.build(model_path, target, out_dir, calibration_dir)
    if target.backend == "onnxruntime" and target.device == "cpu":
        from trtflow.backends import onnxruntime_backend

        entries: dict[str, str] = {}
        qdq_report = None
        if target.precision == "int8":
            assert scales is not None
            model_path, qdq_report = onnxruntime_backend.prepare_int8(
                model_path, scales, target, cpu_flags or [], out_dir, float_layers or [])
            entries = qdq_report["ort_session_config"]
        report = onnxruntime_backend.build(model_path, target, out_dir, entries)
        if qdq_report is not None:
            report["qdq"] = {k: qdq_report[k] for k in (
                "activation_dtype", "reduce_range", "weight_qmax", "quantizable_ops",
                "float_ops", "float_fraction", "float_nodes")}
        return report
    raise BuildError(f"backend '{target.backend}' ({target.device}, {target.precision}) is not "
                     "available in this build of trtflow yet (see the README's feature table)")


def engine_kind(engine_dir: Path) -> str:
    """'tensorrt', 'ort-gpu' or 'ort-cpu', from the files a build wrote."""
    from trtflow.backends import tensorrt_backend

    if (engine_dir / tensorrt_backend.CONFIG_FILE).is_file():
        return "tensorrt"
    config = engine_dir / "session.json"
    if config.is_file() and json.loads(config.read_text()).get("device") == "cuda":
        return "ort-gpu"
    return "ort-cpu"


def load_engine(engine_dir: Path, threads: int | None = None, spinning: bool = True) -> Engine:
    kind = engine_kind(engine_dir)
    if kind == "tensorrt":
        from trtflow.backends import tensorrt_backend

        return tensorrt_backend.TrtEngine.load(engine_dir)
    if kind == "ort-gpu":
        from trtflow.backends import ort_cuda

        return ort_cuda.OrtGpuEngine.load(engine_dir)
    from trtflow.backends import onnxruntime_backend

    return onnxruntime_backend.OrtEngine.load(engine_dir, threads=threads, spinning=spinning)


def gpu_fingerprint(target: Target) -> dict[str, str]:
    """What a GPU engine's build and latency depend on besides the graph: the GPU and the
    runtime versions. Empty for CPU targets (their key already has the CPU's flags)."""
    if target.device != "cuda":
        return {}
    parts = {"gpu": "none"}
    try:
        import torch

        if torch.cuda.is_available():
            parts["gpu"] = torch.cuda.get_device_name(0)
            parts["cuda"] = str(torch.version.cuda)
    except Exception:  # no torch CUDA: the build itself will say what is missing
        pass
    if target.backend == "tensorrt":
        from trtflow.backends import tensorrt_backend

        parts["tensorrt"] = tensorrt_backend.installed_version() or "none"
    return parts
