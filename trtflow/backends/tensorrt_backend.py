"""TensorRT engines through TensorRT's own Python API (10.x and 11.x, detected at run time).

Written against NVIDIA's API reference and type-checked against `typings/tensorrt`
(the subset we call, each signature naming its reference page); TensorRT is not
installable on the machines this project runs on, so this module is untested
here (tests/unit/test_tensorrt_backend.py runs where `tensorrt.Builder` exists).

Build routes by precision:
- fp32: the cleaned ONNX graph.
- fp16: TensorRT 10 sets BuilderFlag.FP16 on the cleaned graph (weak typing);
  TensorRT 11 has no precision flags, so it builds a strongly typed network
  from trtflow's mixed-precision FP16 graph (mixed_precision.py).
- int8, `int8_source: qdq` (default): the calibrate stage's `model.qdq.onnx`
  (explicit quantization), a strongly typed network on 11, INT8 flag on 10.
- int8, `int8_source: calibration_cache`: TensorRT <= 10 only, the cleaned
  graph with an IInt8EntropyCalibrator2 that serves trtflow's
  `calibration.cache` and no batches (TensorRT reads the cache, skips calibrating).
- best: 10: FP16 + INT8 flags on the Q/DQ graph; 11: the Q/DQ graph as typed.

Every build loads and saves a timing cache (TRTFLOW_TIMING_CACHE_DIR, default
`.trtflow/tensorrt` under the working directory, one file per GPU and TensorRT
version) so later builds skip kernel timing, and writes the engine inspector's
layer JSON plus a fusion report: which ONNX nodes each TensorRT layer runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtflow.atomic import atomic_file
from trtflow.errors import BuildError, DataError
from trtflow.params import Target

if TYPE_CHECKING:
    import tensorrt as trt

    from trtflow.backends import Calibration

ENGINE_FILE = "model.engine"
CONFIG_FILE = "tensorrt.json"
LAYERS_FILE = "layers.json"
FUSION_FILE = "fusion_report.json"
TIMING_FILE = "timing.cache"
WORKSPACE_BYTES = 4 << 30
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^|\]]+?)\s*(?:\|[^\]]*)?\]")


def installed_version() -> str | None:
    """TensorRT's version, or None where there is no real TensorRT.

    `import tensorrt` alone proves nothing: the PyPI placeholder and `tensorrt-stubs`
    make it succeed as an empty package, so a real one is told by `tensorrt.Builder`.
    """
    try:
        import tensorrt
    except ImportError:
        return None
    if not hasattr(tensorrt, "Builder"):
        return None
    return str(tensorrt.__version__)


def require_tensorrt() -> None:
    """Return if a real TensorRT is importable, else raise a BuildError saying why not.
    Callers then `import tensorrt as trt`, so every call is checked against the stubs."""
    try:
        import tensorrt
    except ImportError:
        raise BuildError("backend 'tensorrt' needs NVIDIA TensorRT 10 or 11 (`import tensorrt` "
                         "failed); install it on a machine with an NVIDIA GPU, or use "
                         "backend 'onnxruntime' with device 'cuda'") from None
    if not hasattr(tensorrt, "Builder"):
        raise BuildError("the installed 'tensorrt' package has no Builder: it is a placeholder "
                         "or stub package, not NVIDIA TensorRT")


def major_version() -> int:
    import tensorrt as trt

    return int(trt.__version__.split(".")[0])


def _has_weak_typing() -> bool:
    """TensorRT 10 has precision flags (weak typing); 11 removed them."""
    import tensorrt as trt

    return hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8")


def plan_build(target: Target, version_major: int, weak_typing: bool) -> dict[str, Any]:
    """Which graph, network typing and builder flags a target needs on this TensorRT.

    Pure logic (tested without TensorRT): `graph` is 'clean', 'clean_fp16' or 'qdq'.
    """
    precision, source = target.precision, target.int8_source
    if precision == "fp32":
        return {"graph": "clean", "strongly_typed": not weak_typing, "flags": [],
                "calibrator": False}
    if precision == "fp16":
        if weak_typing:
            return {"graph": "clean", "strongly_typed": False, "flags": ["FP16"],
                    "calibrator": False}
        return {"graph": "clean_fp16", "strongly_typed": True, "flags": [], "calibrator": False}
    if precision == "int8" and source == "calibration_cache":
        if not weak_typing:
            raise BuildError(f"TensorRT {version_major} has no calibrator interface (implicit "
                             "INT8 was removed in 11): use int8_source 'qdq'")
        return {"graph": "clean", "strongly_typed": False, "flags": ["INT8"],
                "calibrator": True}
    if weak_typing:
        flags = ["INT8", "FP16"] if precision == "best" else ["INT8"]
        return {"graph": "qdq", "strongly_typed": False, "flags": flags, "calibrator": False}
    return {"graph": "qdq", "strongly_typed": True, "flags": [], "calibrator": False}


def _cache_calibrator(cache: bytes) -> Any:
    """An IInt8EntropyCalibrator2 that only serves a cache (TensorRT <= 10).

    TensorRT asks `read_calibration_cache` first; with a cache it never calls
    `get_batch`, which returns None (no data) should it ask anyway.
    """

    import tensorrt as trt

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self, cache: bytes) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.cache = cache

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            return None

        def read_calibration_cache(self) -> bytes:
            return self.cache

        def write_calibration_cache(self, cache: memoryview) -> None:
            return None

    return CacheCalibrator(cache)


def timing_cache_path() -> Path:
    import tensorrt as trt

    root = Path(os.environ.get("TRTFLOW_TIMING_CACHE_DIR", Path.cwd() / ".trtflow" / "tensorrt"))
    gpu = "gpu"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(0)).strip("-")
    except Exception:  # the name only separates caches; a build without torch still works
        pass
    return root / f"timing-{gpu}-trt{trt.__version__}.cache"


def _graph_path(model_path: Path, plan: dict[str, Any], out_dir: Path,
                calibration_dir: Path | None) -> Path:
    if plan["graph"] == "clean":
        return model_path
    if plan["graph"] == "qdq":
        qdq = calibration_dir / "model.qdq.onnx" if calibration_dir else None
        if qdq is None or not qdq.is_file():
            raise BuildError("a tensorrt int8 target builds from the calibrate stage's "
                             "model.qdq.onnx, which was not given")
        return qdq
    import onnx

    from trtflow.backends.mixed_precision import to_mixed_fp16

    converted, _ = to_mixed_fp16(onnx.load(str(model_path)))
    path = out_dir / "model.fp16.onnx"
    onnx.save_model(converted, str(path))
    return path


def _dynamic_profile(builder: trt.Builder, network: trt.INetworkDefinition,
                     max_batch: int) -> trt.IOptimizationProfile:
    """min 1 / opt and max `max_batch` on the batch axis; other dynamic axes 1..opt 128..512."""
    import tensorrt as trt

    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        lo = [1 if d < 0 else d for d in shape]
        opt = [(max_batch if axis == 0 else 128) if d < 0 else d for axis, d in enumerate(shape)]
        hi = [(max_batch if axis == 0 else 512) if d < 0 else d for axis, d in enumerate(shape)]
        profile.set_shape(tensor.name, trt.Dims(lo), trt.Dims(opt), trt.Dims(hi))
    return profile


def build(model_path: Path, target: Target, out_dir: Path, calibration_dir: Path | None = None,
          max_batch: int = 32) -> dict[str, Any]:
    """Build `out_dir/model.engine` with a timing cache, layer JSON and fusion report."""
    if target.device != "cuda":
        raise BuildError(f"backend 'tensorrt' runs on device 'cuda', not '{target.device}'")
    require_tensorrt()
    import tensorrt as trt

    plan = plan_build(target, major_version(), _has_weak_typing())
    graph = _graph_path(model_path, plan, out_dir, calibration_dir)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plan["strongly_typed"] and hasattr(trt.NetworkDefinitionCreationFlag,
                                          "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT's ONNX parser rejected {graph}: {errors[:600]}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for flag in plan["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan["calibrator"]:
        cache = calibration_dir / "calibration.cache" if calibration_dir else None
        if cache is None or not cache.is_file():
            raise BuildError("int8_source 'calibration_cache' needs the calibrate stage's "
                             "calibration.cache")
        from trtflow.quant.cache import check_cache_matches

        check_cache_matches(cache, _tensor_names(graph))
        config.int8_calibrator = _cache_calibrator(cache.read_bytes())
    if any(network.get_input(i).shape[0] < 0 for i in range(network.num_inputs)):
        config.add_optimization_profile(_dynamic_profile(builder, network, max_batch))

    timing_path = timing_cache_path()
    timing_bytes = timing_path.read_bytes() if timing_path.is_file() else b""
    timing = config.create_timing_cache(timing_bytes)
    config.set_timing_cache(timing, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"TensorRT {trt.__version__} could not build an engine from "
                         f"{graph} (see its log above)")
    (out_dir / ENGINE_FILE).write_bytes(bytes(serialized))
    updated = bytes(config.get_timing_cache().serialize())
    timing_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(timing_path) as f:
        f.write(updated)
    shutil.copyfile(timing_path, out_dir / TIMING_FILE)

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(bytes(serialized))
    if engine is None:
        raise BuildError("TensorRT could not load the engine it just built")
    inspector = engine.create_engine_inspector()
    layers_json = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    (out_dir / LAYERS_FILE).write_text(layers_json)
    fusion = fusion_report(json.loads(layers_json), _onnx_nodes(graph))
    (out_dir / FUSION_FILE).write_text(json.dumps(fusion, indent=2))

    meta = {"backend": "tensorrt", "device": "cuda", "tensorrt": trt.__version__,
            "precision": target.precision, "plan": plan, "graph": graph.name,
            "timing_cache": {"path": str(timing_path), "reused_bytes": len(timing_bytes),
                             "saved_bytes": len(updated)}}
    (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return {"engine_file": ENGINE_FILE, "engine_bytes": (out_dir / ENGINE_FILE).stat().st_size,
            "tensorrt": meta, "fusion": {k: fusion[k] for k in (
                "layers", "onnx_nodes", "fused_layers", "layer_types", "unmapped_onnx_nodes")}}


def _onnx_nodes(path: Path) -> list[tuple[str, str]]:
    import onnx

    return [(n.name, n.op_type) for n in onnx.load(str(path), load_external_data=False).graph.node]


def _tensor_names(path: Path) -> set[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    names = {v.name for v in graph.input} | {v.name for v in graph.output}
    return names | {out for n in graph.node for out in n.output}


def layer_onnx_nodes(layer: dict[str, Any]) -> list[str]:
    """The ONNX nodes one TensorRT layer runs, from its `Metadata` (DETAILED verbosity:
    `[ONNX Layer: a]\\x1f[ONNX Layer: b | ...]`), else from a fused name `a + b`."""
    metadata = str(layer.get("Metadata") or "")
    found = _ONNX_LAYER.findall(metadata)
    if found:
        return [name.strip() for name in found]
    name = str(layer.get("Name", ""))
    return [part.strip() for part in name.split(" + ")] if " + " in name else []


def _layer_precision(layer: dict[str, Any]) -> str:
    """Output data type: 10.x writes `Format/Datatype`, 11.x splits it into `DataType`."""
    outputs = layer.get("Outputs") or []
    if not outputs or not isinstance(outputs[0], dict):
        return "unknown"
    first = outputs[0]
    return str(first.get("DataType") or first.get("Format/Datatype") or "unknown")


def fusion_report(info: dict[str, Any], onnx_nodes: list[tuple[str, str]]) -> dict[str, Any]:
    """Which ONNX nodes became which TensorRT layers (kernels), from the inspector's JSON."""
    layers = info.get("Layers", [])
    op_of = dict(onnx_nodes)
    rows, covered = [], set()
    for layer in layers:
        if not isinstance(layer, dict):  # ProfilingVerbosity below DETAILED: names only
            layer = {"Name": str(layer)}
        nodes = layer_onnx_nodes(layer)
        covered.update(nodes)
        rows.append({"layer": layer.get("Name", ""), "type": layer.get("LayerType", "unknown"),
                     "tactic": layer.get("TacticName", ""), "precision": _layer_precision(layer),
                     "onnx_nodes": nodes, "onnx_ops": [op_of.get(n, "?") for n in nodes]})
    fused = [r for r in rows if len(r["onnx_nodes"]) > 1]
    patterns = Counter(" + ".join(r["onnx_ops"]) for r in fused)
    unmapped = [n for n, op in onnx_nodes if n not in covered and op != "Constant"]
    return {
        "layers": len(rows),
        "onnx_nodes": len(onnx_nodes),
        "fused_layers": len(fused),
        "fusion_patterns": dict(patterns.most_common()),
        "layer_types": dict(Counter(str(r["type"]) for r in rows).most_common()),
        "precisions": dict(Counter(r["precision"] for r in rows).most_common()),
        # folded into constants, fused without metadata, or removed as no-ops
        "unmapped_onnx_nodes": len(unmapped),
        "unmapped_examples": unmapped[:20],
        "io_tensors": info.get("I/O Tensors", info.get("Bindings", [])),
        "rows": rows,
    }


class TrtEngine:
    """A deserialized TensorRT engine run through `execute_async_v3` on torch's stream."""

    def __init__(self, engine: trt.ICudaEngine) -> None:
        import tensorrt as trt
        import torch

        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inp = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == inp]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) != inp]
        self.torch = torch
        self.buffers: dict[str, Any] = {}

    @classmethod
    def load(cls, engine_dir: Path) -> TrtEngine:
        require_tensorrt()
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(logger).deserialize_cuda_engine(
            (engine_dir / ENGINE_FILE).read_bytes())
        if engine is None:
            raise BuildError(f"TensorRT {trt.__version__} could not load "
                             f"{engine_dir / ENGINE_FILE} (built by another TensorRT or GPU?)")
        return cls(engine)

    def _dtype(self, name: str) -> np.dtype:
        import tensorrt as trt

        return np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))

    def bind(self, inputs: dict[str, np.ndarray]) -> None:
        """Copy inputs to device buffers and set every tensor address (shapes may change)."""
        import tensorrt as trt

        torch = self.torch
        for name in self.input_names:
            if name not in inputs:
                raise DataError(f"TensorRT engine input '{name}' is missing")
            host = np.ascontiguousarray(inputs[name], dtype=self._dtype(name))
            if not self.context.set_input_shape(name, trt.Dims(list(host.shape))):
                raise DataError(f"TensorRT engine input '{name}': shape {host.shape} is "
                                "outside the engine's optimization profile")
            buf = torch.from_numpy(host).to("cuda")
            self.buffers[name] = buf
            self.context.set_tensor_address(name, buf.data_ptr())
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.zeros(1, self._dtype(name))).dtype
            buf = torch.empty(shape, dtype=dtype, device="cuda")
            self.buffers[name] = buf
            self.context.set_tensor_address(name, buf.data_ptr())

    def launch(self) -> None:
        """One inference on the bound buffers, enqueued on torch's current stream."""
        stream = self.torch.cuda.current_stream().cuda_stream
        if not self.context.execute_async_v3(stream):
            raise BuildError("TensorRT execute_async_v3 failed")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.bind(inputs)
        self.launch()
        self.torch.cuda.current_stream().synchronize()
        return {n: self.buffers[n].float().cpu().numpy() for n in self.output_names}


class TensorRTBackend:
    """NVIDIA TensorRT 10/11 through its Python API (where a real TensorRT loads)."""

    name = "tensorrt"
    libraries = ("onnx",)

    def fingerprint(self, target: Target) -> dict[str, str]:
        from trtflow.backends import gpu_fingerprint

        return {**gpu_fingerprint(target), "tensorrt": installed_version() or "none"}

    def build(self, model_path: Path, target: Target, out_dir: Path,
              calibration: Calibration | None) -> dict[str, Any]:
        return build(model_path, target, out_dir, calibration.path if calibration else None)

    def load(self, engine_dir: Path, threads: int | None = None, spinning: bool = True
             ) -> TrtEngine:
        return TrtEngine.load(engine_dir)


BACKEND = TensorRTBackend()
