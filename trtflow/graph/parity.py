"""Compare two sets of named outputs; name the worst tensor when they differ."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from trtflow.errors import ModelError, ParityError


@dataclass
class ParityReport:
    worst_output: str
    max_abs_error: float
    max_rel_error: float
    atol: float
    rtol: float
    ok: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ort_run(model_path: Path, inputs: dict[str, np.ndarray], threads: int | None = None
            ) -> dict[str, np.ndarray]:
    """Run a graph once on ONNX Runtime CPU with basic optimizations (a reference run)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
        run_opts = ort.RunOptions()
        run_opts.log_severity_level = 4  # a failure is raised below, without ORT's own log
        return dict(zip(names, sess.run(names, feed, run_opts), strict=True))
    except (ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.RuntimeException) as exc:
        shapes = {k: list(v.shape) for k, v in inputs.items()}
        declared = {i.name: i.shape for i in sess.get_inputs()} if "sess" in locals() else {}
        raise ModelError(f"ONNX Runtime cannot run {model_path} on sample inputs {shapes} "
                         f"(declared {declared}): {' '.join(str(exc).split())[:300]}. Dynamic "
                         "dims other than the batch are filled with 16: if the model needs "
                         "other sizes, give model.inputs with those dims fixed in params"
                         ) from None


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
            atol: float, rtol: float, what: str) -> ParityReport:
    """Worst output by how far it exceeds atol + rtol*|ref|; raise ParityError beyond it."""
    worst: tuple[float, str, float, float] | None = None
    for name, ref in reference.items():
        if name not in candidate:
            raise ParityError(f"{what}: output '{name}' is missing (got {sorted(candidate)})")
        got = candidate[name]
        if got.shape != ref.shape:
            raise ParityError(f"{what}: output '{name}' has shape {list(got.shape)}, "
                              f"reference {list(ref.shape)}")
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        excess = float(np.max(diff - (atol + rtol * np.abs(ref)), initial=-np.inf))
        abs_err = float(diff.max(initial=0.0))
        rel_err = float((diff / np.maximum(np.abs(ref), 1e-12)).max(initial=0.0))
        if worst is None or excess > worst[0]:
            worst = (excess, name, abs_err, rel_err)
    assert worst is not None, "no outputs to compare"
    report = ParityReport(worst[1], worst[2], worst[3], atol, rtol, ok=worst[0] <= 0)
    if not report.ok:
        raise ParityError(f"{what}: output '{report.worst_output}' differs by up to "
                          f"{report.max_abs_error:.3g} (abs), beyond the tolerance "
                          f"atol={atol:g} + rtol={rtol:g}*|reference|")
    return report
