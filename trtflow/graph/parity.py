"""Parity checks through NVIDIA Polygraphy: its ONNX Runtime runner runs a graph, its
`Comparator` judges two sets of named outputs; trtflow names the worst tensor.

Polygraphy's element-wise check (`SimpleCompareFunc(check_error_stat="elemwise")`)
fails an element only when it is beyond BOTH the absolute and the relative tolerance,
the relative error taken against the reference. trtflow adds what Polygraphy only logs:
a missing output or a shape mismatch is an error naming the output, and a failure
names the worst output and its error (ParityError).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from trtflow.errors import ModelError, ParityError
from trtflow.ort_session import ort_session

REFERENCE, CANDIDATE = "reference", "candidate"


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


def _session(model_path: Path, threads: int | None) -> ort.InferenceSession:
    """ONNX Runtime CPU with basic optimizations: a reference, not a tuned engine."""
    return ort_session(model_path, "basic", threads)


_ORT_FAILURES = (ort.capi.onnxruntime_pybind11_state.Fail,
                 ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                 ort.capi.onnxruntime_pybind11_state.RuntimeException)


def ort_run(model_path: Path, inputs: dict[str, np.ndarray], threads: int | None = None
            ) -> dict[str, np.ndarray]:
    """Run a graph once through Polygraphy's OnnxrtRunner (a reference run)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    declared: dict[str, Any] = {}
    try:
        session = _session(model_path, threads)
        declared = {i.name: i.shape for i in session.get_inputs()}
        feed = {name: inputs[name] for name in declared if name in inputs}
        # silent, critical included: the ModelError below carries Polygraphy's message
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1), OnnxrtRunner(session) as runner:
            return dict(runner.infer(feed))
    except (*_ORT_FAILURES, PolygraphyException) as exc:
        shapes = {k: list(v.shape) for k, v in inputs.items()}
        raise ModelError(f"ONNX Runtime cannot run {model_path} on sample inputs {shapes} "
                         f"(declared {declared}): {' '.join(str(exc).split())[:300]}. Dynamic "
                         "dims other than the batch are filled with 16: if the model needs "
                         "other sizes, give model.inputs with those dims fixed in params"
                         ) from None


def _check_names_and_shapes(reference: dict[str, np.ndarray],
                            candidate: dict[str, np.ndarray], what: str) -> None:
    if not reference:
        raise ParityError(f"{what}: no outputs to compare")
    for name, ref in reference.items():
        if name not in candidate:
            raise ParityError(f"{what}: output '{name}' is missing (got {sorted(candidate)})")
        if candidate[name].shape != ref.shape:
            raise ParityError(f"{what}: output '{name}' has shape "
                              f"{list(candidate[name].shape)}, reference {list(ref.shape)}")


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
            atol: float, rtol: float, what: str) -> ParityReport:
    """Polygraphy's Comparator on the two output sets; the worst output is a failing one
    with the largest absolute error (else the largest overall); ParityError on failure."""
    from polygraphy.comparator import Comparator, IterationResult, RunResults, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    _check_names_and_shapes(reference, candidate, what)
    results = RunResults([
        (CANDIDATE, [IterationResult({n: candidate[n] for n in reference}, runner_name=CANDIDATE)]),
        (REFERENCE, [IterationResult(dict(reference), runner_name=REFERENCE)]),
    ])
    # reldiff is taken against the second runner of the pair: the reference
    check = SimpleCompareFunc(atol=atol, rtol=rtol, check_error_stat="elemwise")
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
        accuracy = Comparator.compare_accuracy(results, compare_func=check,
                                               comparisons=[(0, 1)])
    (per_output,) = accuracy[0][(CANDIDATE, REFERENCE)]  # one comparison, one iteration
    worst_name, worst = max(per_output.items(),
                            key=lambda item: (not bool(item[1]), item[1].max_absdiff))
    report = ParityReport(worst_name, float(worst.max_absdiff), float(worst.max_reldiff),
                          atol, rtol, ok=bool(accuracy))
    if not report.ok:
        raise ParityError(f"{what}: output '{report.worst_output}' differs by up to "
                          f"{report.max_abs_error:.3g} (abs) and {report.max_rel_error:.3g} "
                          f"(rel), beyond both atol={atol:g} and rtol={rtol:g} (Polygraphy's "
                          "element-wise check)")
    return report
