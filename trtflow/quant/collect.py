"""The streaming calibration pass: run the FP32 graph once over the data, histogram activations.

The tensors to calibrate are exposed as extra graph outputs of an ONNX Runtime
session, the calibration data streams through in batches, and each batch only
updates fixed-size histograms: memory does not grow with the data set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from trtflow.errors import CalibrationError
from trtflow.ort_session import ort_session
from trtflow.quant.collector import HistogramCollector
from trtflow.quant.exact import ExactHistogramCollector, MaxCollector
from trtflow.quant.histogram import DEFAULT_NUM_BINS
from trtflow.quant.session_batch import output_bytes, samples_per_run

Progress = Callable[[int], None]
# With every float activation exposed, ORT returns all of a batch's activations at once
# (resnet18, 32 images: ~2.7 GB). Batches of a dynamic-batch graph are run at most this
# many samples at a time, fewer where $TRTFLOW_MEMORY_BUDGET needs (quant.session_batch:
# one sample is run first to measure them); the histograms are the same.
SESSION_BATCH = 8


def expose_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs `names` (float activations)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    produced = {out for node in exposed.graph.node for out in node.output}
    produced |= {i.name for i in exposed.graph.input}
    for name in names:
        if name not in produced:
            raise CalibrationError(f"tensor '{name}' is not produced by any node of the graph")
        if name not in present:
            exposed.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                                      None))
    return exposed


@dataclass
class CollectResult:
    collector: HistogramCollector
    samples: int
    batches: int
    seconds: float


class _Updater(Protocol):
    """What a pass feeds each batch's activations to (a histogram or a max collector)."""

    def update(self, batch: Mapping[str, np.ndarray]) -> None: ...


def _session(model: onnx.ModelProto, tensors: list[str], threads: int
             ) -> ort.InferenceSession:
    # ORT's idle workers spin between runs by default, taking the cores the histogram
    # threads need right after each batch: spinning off.
    return ort_session(expose_outputs(model, tensors), "all", threads, spinning=False)


def _run_pass(session: ort.InferenceSession, tensors: list[str],
              batches: Iterable[dict[str, np.ndarray]], sink: _Updater,
              max_samples: int | None, progress: Progress | None) -> tuple[int, int]:
    """Stream ``batches`` through ``session`` into ``sink``; returns (samples, batches)."""
    input_names = [i.name for i in session.get_inputs()]
    dynamic_batch = all(not isinstance(i.shape[0], int) for i in session.get_inputs()
                        if i.shape)
    samples, n_batches = 0, 0
    per_run: int | None = None  # samples a run may take, from the budget
    for feed in batches:
        if max_samples is not None and samples >= max_samples:
            break
        if max_samples is not None:
            feed = {k: v[: max_samples - samples] for k, v in feed.items()}
        size = len(next(iter(feed.values())))
        try:
            if per_run is None and dynamic_batch:  # one sample, not fed to the histograms
                probe = session.run(tensors, {n: feed[n][:1] for n in input_names})
                per_run = samples_per_run(output_bytes(probe), SESSION_BATCH)
                del probe
            step = per_run if dynamic_batch and per_run else max(size, 1)
            for start in range(0, size, step):
                part = {n: feed[n][start:start + step] for n in input_names}
                outputs = session.run(tensors, part)
                sink.update(dict(zip(tensors, outputs, strict=True)))
                del outputs
        except CalibrationError:
            raise  # the histograms' own refusal (NaN/Inf activations) or the budget's
        except KeyError as exc:
            raise CalibrationError(f"calibration batch {n_batches + 1} has no input {exc}; "
                                   f"the model needs {input_names}") from None
        except Exception as exc:  # ORT's shape/type errors name the input
            shapes = {k: list(v.shape) for k, v in feed.items()}
            raise CalibrationError(f"calibration batch {n_batches + 1} (shapes {shapes}) does "
                                   f"not fit the model: {str(exc).splitlines()[0][:300]}"
                                   ) from None
        samples += size
        n_batches += 1
        if progress:
            progress(size)
    if samples == 0:
        raise CalibrationError("the calibration data set is empty: no batch was read")
    return samples, n_batches


def collect_histograms(model: onnx.ModelProto, tensors: list[str],
                       batches: Iterable[dict[str, np.ndarray]], threads: int,
                       num_bins: int = DEFAULT_NUM_BINS, max_samples: int | None = None,
                       progress: Progress | None = None, mode: str = "streaming",
                       batches_again: Callable[[], Iterator[dict[str, np.ndarray]]] | None
                       = None) -> CollectResult:
    """Histograms of every tensor in ``tensors``.

    ``streaming``: one pass over ``batches``, power-of-two range growth (``histogram``).
    ``exact``: a max pass over ``batches``, then a second pass over ``batches_again()``
    binning over each tensor's global max (``exact``): TensorRT's grid, at twice the
    inference cost.
    """
    session = _session(model, tensors, threads)
    start = time.perf_counter()
    if mode == "streaming":
        collector = HistogramCollector(num_bins)
        samples, n_batches = _run_pass(session, tensors, batches, collector, max_samples,
                                       progress)
        return CollectResult(collector, samples, n_batches, time.perf_counter() - start)
    if mode != "exact":
        raise CalibrationError(f"calibration.histogram must be 'exact' or 'streaming', "
                               f"got {mode!r}")
    if batches_again is None:
        raise CalibrationError("exact histograms need a second pass over the calibration "
                               "data, and no way to re-read it was given")
    maxima = MaxCollector()
    _run_pass(session, tensors, batches, maxima, max_samples, None)
    exact = ExactHistogramCollector({t: maxima.amax[t] for t in tensors}, num_bins,
                                    HistogramCollector(num_bins).threads)
    samples, n_batches = _run_pass(session, tensors, batches_again(), exact, max_samples,
                                   progress)
    return CollectResult(exact.collector(), samples, n_batches, time.perf_counter() - start)
