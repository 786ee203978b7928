"""Engine backends behind one small interface.

`build(model_path, target, out_dir) -> dict` writes an engine directory;
`load(engine_dir) -> Engine`; `Engine.run(inputs) -> dict[name, array]`.
One module per backend; optional libraries are imported inside that module.
"""

from __future__ import annotations

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
                 float_layers: list[str] | None = None) -> dict[str, Any]:
    """Build an engine; an int8 target gets `scales` (tensor -> amax) from calibration."""
    if target.precision == "int8" and scales is None:
        raise BuildError("an int8 target needs calibrated scales (the calibrate stage)")
    if target.backend == "onnxruntime":
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


def load_engine(engine_dir: Path, threads: int | None = None, spinning: bool = True) -> Engine:
    from trtflow.backends import onnxruntime_backend

    return onnxruntime_backend.OrtEngine.load(engine_dir, threads=threads, spinning=spinning)
