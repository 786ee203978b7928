"""Checks on an ONNX graph that must pass before any stage stores an artifact.

Each names what is wrong in the user's terms, where a runtime would fail later with a
truncated C++ message (an opset newer than ONNX Runtime), a checker message that does
not say which nodes (a cycle), or not at all (NaN/Inf weights make every calibration
and comparison meaningless).
"""

from __future__ import annotations

import functools
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from trtflow.errors import ModelError
from trtflow.params import Target, TensorSpec

_DEFAULT_DOMAINS = ("", "ai.onnx")


@functools.cache
def runtime_limits() -> tuple[int, int]:
    """(newest default-domain opset, newest IR version) that this ONNX and ONNX Runtime
    both implement: onnx's schema table and ORT's CPU kernels, whichever ends first."""
    newest = onnx.defs.onnx_opset_version()
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        kernels = [k.version_range[0] for k in ort_state.get_all_opkernel_def()
                   if k.domain in _DEFAULT_DOMAINS]
        if kernels:
            newest = min(newest, max(kernels))
    except (ImportError, AttributeError):
        pass
    return newest, onnx.IR_VERSION


def check_versions(model: onnx.ModelProto, path: Path) -> None:
    """Opset and IR version no newer than the runtime reads."""
    max_opset, max_ir = runtime_limits()
    for entry in model.opset_import:
        if entry.domain in _DEFAULT_DOMAINS and entry.version > max_opset:
            raise ModelError(f"ONNX file {path} uses opset {entry.version} > supported "
                             f"{max_opset} (ONNX Runtime and onnx installed here implement "
                             f"opsets up to {max_opset}); re-export with opset <= "
                             f"{max_opset}")
        if entry.domain in _DEFAULT_DOMAINS and entry.version < 1:
            raise ModelError(f"ONNX file {path} declares opset {entry.version}; expected >= 1")
    if not any(e.domain in _DEFAULT_DOMAINS for e in model.opset_import) and model.graph.node:
        raise ModelError(f"ONNX file {path} imports no default-domain opset")
    if model.ir_version > max_ir:
        raise ModelError(f"ONNX file {path} has IR version {model.ir_version} > supported "
                         f"{max_ir}; re-save it with onnx <= the installed {onnx.__version__}")


def cycle_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes on or behind a cycle (empty when the graph is a DAG).

    Kahn's algorithm over the value names each node produces and consumes; nodes left
    with unmet inputs produced inside the graph are in (or fed by) a cycle.
    """
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    waiting = [0] * len(graph.node)
    users: dict[int, list[int]] = defaultdict(list)
    for i, node in enumerate(graph.node):
        for name in set(node.input):
            if name in producer:
                waiting[i] += 1
                users[producer[name]].append(i)
    ready = deque(i for i, n in enumerate(waiting) if n == 0)
    done = 0
    while ready:
        i = ready.popleft()
        done += 1
        for j in users[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if done == len(graph.node):
        return []
    return [graph.node[i].name or f"{graph.node[i].op_type}->{graph.node[i].output[0]}"
            for i, n in enumerate(waiting) if n > 0]


def check_acyclic(model: onnx.ModelProto, path: Path) -> None:
    stuck = cycle_nodes(model.graph)
    if stuck:
        raise ModelError(f"ONNX file {path}: the graph has a cycle through node(s) "
                         f"{', '.join(stuck[:8])}{' ...' if len(stuck) > 8 else ''}; an ONNX "
                         "graph must be acyclic (loops belong in a Loop/Scan node)")


def nonfinite_initializers(model: onnx.ModelProto) -> list[str]:
    """Names of float initializers holding NaN or Inf (external data must be loaded)."""
    bad = []
    for init in model.graph.initializer:
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                  onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16):
            continue
        try:
            values = numpy_helper.to_array(init)
        except (ValueError, TypeError) as exc:
            raise ModelError(f"initializer '{init.name}' cannot be read: {exc}") from None
        if not np.isfinite(values.astype(np.float32, copy=False)).all():
            bad.append(init.name)
    return bad


def check_initializers(model: onnx.ModelProto, path: Path) -> None:
    bad = nonfinite_initializers(model)
    if bad:
        raise ModelError(f"ONNX file {path}: {len(bad)} initializer(s) hold NaN or Inf: "
                         f"{', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}; a model with "
                         "non-finite weights cannot be calibrated or validated")


def output_classes(model: onnx.ModelProto) -> int | None:
    """The class count of a classifier graph: the first output's static last dim, if any."""
    if not model.graph.output:
        return None
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(dims) < 2 or not dims[-1].HasField("dim_value"):
        return None
    return int(dims[-1].dim_value)


QUANTIZED = ("int8", "fp8")


def needs_calibration(target: Target) -> bool:
    """Quantized targets, and `best` on the CPU when its candidates include int8."""
    return target.precision in QUANTIZED or (
        target.precision == "best" and target.device == "cpu"
        and "int8" in target.select.precisions)


def static_batch(specs: list[TensorSpec]) -> int | None:
    """The batch size a model's inputs fix (a number as their first dim), or None."""
    firsts = [s.shape[0] for s in specs if s.shape]
    if not firsts or not all(isinstance(d, int) for d in firsts):
        return None
    return int(firsts[0])


def check_rows(outputs: dict[str, np.ndarray], rows: int, who: str,
               labels: Any = None) -> None:
    """Every output keeps the batch dimension of the inputs (`rows` rows), and the labels
    have one row per output row: otherwise the comparison would validate nothing."""
    for name, value in outputs.items():
        got = value.shape[0] if np.ndim(value) else 0
        if got != rows:
            raise ModelError(
                f"{who} output '{name}' has shape {list(np.shape(value))} for a batch of "
                f"{rows} input row(s): outputs must keep the batch dimension of the inputs "
                f"({rows} rows, got {got}); a model that reduces over the batch axis (e.g. a "
                "mean over axis 0) cannot be validated sample by sample")
    if labels is not None:
        first = next(iter(outputs))
        if len(labels) != outputs[first].shape[0]:
            raise ModelError(f"{len(labels)} label row(s) for {outputs[first].shape[0]} "
                             f"row(s) of {who} output '{first}': labels and outputs must "
                             "have the same number of rows")


def check_static_batch(specs: list[TensorSpec], quantized_targets: list[str]) -> None:
    """A model whose inputs fix the batch size compiles and validates at that size
    (validate runs in chunks of it); calibration runs batches of other sizes (one sample
    to measure, then up to 8), so quantized targets are refused, with the reason."""
    batch = static_batch(specs)
    if batch is None or not quantized_targets:
        return
    names = ", ".join(f"'{s.name}' {list(s.shape)}" for s in specs)
    raise ModelError(f"target(s) {', '.join(quantized_targets)} need calibration, which runs "
                     f"the model on batches of other sizes, but its input(s) {names} fix the "
                     f"batch size to {batch}: re-export the model with a dynamic batch axis "
                     "(e.g. dynamic_axes / torch.export.Dim), or compile float targets only "
                     f"(they validate at batch {batch})")
