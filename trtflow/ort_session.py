"""The one place an ONNX Runtime session is made.

Every trtflow session (engines, references, calibration passes, parity and kernel
checks) comes from `ort_session`, so its optimization level, thread count, spinning,
config entries and log level are set the same way everywhere. onnxruntime is imported
on first use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

Optimization = Literal["disable", "basic", "extended", "all"]
CPU = ("CPUExecutionProvider",)


def default_threads() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def optimization_level(name: str) -> ort.GraphOptimizationLevel:
    import onnxruntime as ort

    return {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[name]


def session_options(optimization: str = "all", threads: int | None = None,
                    spinning: bool = True, config_entries: Mapping[str, str] | None = None,
                    optimized_model_path: Path | None = None) -> ort.SessionOptions:
    """Options of a trtflow session. `threads=None` leaves ORT's own default; `spinning=False`
    when several sessions share the cores in turn (idle ORT workers otherwise busy-wait and
    slow whichever session runs next)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = optimization_level(optimization)
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in (config_entries or {}).items():
        opts.add_session_config_entry(key, value)
    if optimized_model_path is not None:
        opts.optimized_model_filepath = str(optimized_model_path)
    return opts


def ort_session(model: Path | str | bytes | onnx.ModelProto, optimization: str = "all",
                threads: int | None = None, spinning: bool = True,
                config_entries: Mapping[str, str] | None = None,
                optimized_model_path: Path | None = None,
                providers: Sequence[Any] = CPU) -> ort.InferenceSession:
    """An InferenceSession over a model file, serialized bytes or a ModelProto."""
    import onnxruntime as ort

    source: str | bytes
    if isinstance(model, str | Path):
        source = str(model)
    elif isinstance(model, bytes):
        source = model
    else:
        source = model.SerializeToString()
    opts = session_options(optimization, threads, spinning, config_entries,
                           optimized_model_path)
    return ort.InferenceSession(source, opts, providers=list(providers))
