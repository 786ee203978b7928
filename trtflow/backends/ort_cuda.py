"""ONNX Runtime on NVIDIA GPUs: the CUDA provider (and the TensorRT provider as a route).

An engine directory holds `engine.onnx` (the graph in its final precision,
optimized offline only to ORT's *basic* level, which is provider-independent)
and `session.json`. Loading it never reruns a conversion.

Running: each distinct set of input shapes gets its own *profile*: the graph
with those shapes fixed (so ORT folds every shape computation and places all
nodes on the GPU), an ORT session, and device buffers bound once through IO
binding. With static shapes the profile captures a CUDA graph on its first runs
and replays it afterwards, which removes the per-kernel launch cost that
dominates small batches. A graph that cannot be captured (a node left on the
CPU) falls back to plain IO binding, and the profile says why. Output shapes that
contrib ops hide from ONNX shape inference are learned from one plain run.

Transformers (graphs with attention; `options.transformer_fusion`): the CUDA
cleanup is trtflow.graph.attention_fusion (torch's SDPA blocks -> MultiHeadAttention
on ORT's flash / memory-efficient kernels, then ORT's transformer optimizer:
SkipLayerNorm, BiasGelu, ...; fp16 through its converter); the build report names
what fused.

Precisions on the CUDA provider: fp32; fp16 (mixed: see quant/mixed_precision.py, or
the fused graph's own conversion); int8 runs the calibrate stage's saved TensorRT-
placement Q/DQ graph, which the CUDA provider runs as dequantize + float kernels
(it has no int8 convolution), so it is measured but does not speed up; best = fp16.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from pydantic import Field

from trtflow.backends import BackendOptions
from trtflow.errors import BuildError, DataError
from trtflow.graph.attention_fusion import fuse_transformer, is_transformer
from trtflow.ort_session import ort_session

if TYPE_CHECKING:
    from trtflow.params import Target
    from trtflow.quant.artifact import Calibration

ENGINE_FILE = "engine.onnx"
CONFIG_FILE = "session.json"
TRT_CACHE_DIR = "trt_cache"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
# EXHAUSTIVE cuDNN search is ORT's default; the workspace cap off lets cuDNN pick
# its fastest algorithms (ORT >= 1.14 default, written down so the engine says so).
# NHWC: on an H100, ResNet-50 FP16 with CUDA graphs ran 0.60 ms (bs1) / 3.16 ms (bs32)
# with prefer_nhwc against 0.82 / 3.89 ms without (bench/results/gpu_h100.json).
CUDA_OPTIONS: dict[str, str] = {"cudnn_conv_algo_search": "EXHAUSTIVE",
                                "cudnn_conv_use_max_workspace": "1",
                                "prefer_nhwc": "1", "fuse_conv_bias": "1"}
# Layout options act when a session is created on the GPU; the saved engine must stay in
# standard ONNX (NCHW) so shapes can be inferred for each static profile.
_LOAD_TIME_ONLY = ("prefer_nhwc", "fuse_conv_bias")
_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
           onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32,
           onnx.TensorProto.BOOL: np.bool_}
_preloaded = False


class OrtGpuOptions(BackendOptions):
    """`targets.NAME.options` of backends onnxruntime and onnxruntime-tensorrt on cuda."""

    optimization: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="ORT graph optimization level when the engine loads (the "
        "saved graph stops at basic, which is provider-independent)")
    execution_device: Literal["cuda", "cpu"] = Field(
        default="cuda", description="cpu: build and run the same engine on ORT's CPU provider "
        "(same conversion, profiles and IO binding, no CUDA graphs), for tests and smoke "
        "runs on machines without a GPU")
    transformer_fusion: Literal["auto", "on", "off"] = Field(
        default="auto", description="ONNX Runtime's transformer fusions (MultiHeadAttention "
        "on its flash / memory-efficient kernels, SkipLayerNorm, BiasGelu; fp16 through "
        "its converter) for fp32/fp16 engines; auto: on for graphs with attention")

    def ignored(self, precision: str) -> list[tuple[str, str]]:
        if self.transformer_fusion == "on" and precision == "int8":
            return [("transformer_fusion", "an int8 engine runs the calibrated Q/DQ graph")]
        return []


def _options(target: Target) -> OrtGpuOptions:
    options = target.options
    if not isinstance(options, OrtGpuOptions):
        options = OrtGpuOptions.model_validate(options.model_dump())
    return options


def preload() -> None:
    """Load the CUDA/cuDNN libraries ORT needs (from the nvidia-* wheels torch brings)."""
    global _preloaded
    if not _preloaded and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception:  # a partial preload still lets ORT find what it needs itself
            pass
        _preloaded = True


def require_provider(name: str) -> None:
    if name not in ort.get_available_providers():
        raise BuildError(f"{name} is not available in this onnxruntime ({ort.__version__}: "
                         f"{', '.join(ort.get_available_providers())}); a device: cuda target "
                         "needs the onnxruntime-gpu package on a machine with an NVIDIA GPU")


def effective_precision(target: Target) -> str:
    """`best` on the CUDA provider is fp16: int8 Q/DQ runs as float there (measured)."""
    return "fp16" if target.precision == "best" else target.precision


def prepare_model(model_path: Path, target: Target, calibration: Calibration | None
                  ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The graph in the target's precision: as is, fused for transformers (attention,
    SkipLayerNorm, ...; fp16 through ONNX Runtime's converter), mixed fp16, or the
    calibrate stage's own TensorRT-placement Q/DQ graph (read, never placed again)."""
    precision = effective_precision(target)
    if precision == "int8":
        if calibration is None:
            raise BuildError("an int8 target needs the calibrate stage's output")
        qdq_path = calibration.qdq_model("int8")
        return onnx.load(str(qdq_path)), {"precision": "int8", "qdq": {
            "graph": calibration.qdq_model_name("int8"), "placement": "tensorrt",
            "float_layers": calibration.float_layers()}}
    model = onnx.load(str(model_path))
    fusion = _options(target).transformer_fusion
    if fusion == "on" or (fusion == "auto" and is_transformer(model)):
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            fused = Path(scratch) / "fused.onnx"
            report = fuse_transformer(model_path, fused, fp16=precision == "fp16",
                                      use_gpu=_options(target).execution_device == "cuda")
            model = onnx.load(str(fused))
        return model, {"precision": precision, "transformer_fusion": report}
    if precision == "fp32":
        return model, {"precision": "fp32"}
    from trtflow.quant.mixed_precision import to_mixed_fp16

    return to_mixed_fp16(model)


def _build(model_path: Path, target: Target, out_dir: Path,
           calibration: Calibration | None) -> dict[str, Any]:
    """Write an ORT GPU engine directory; the session is created once on the GPU to check it
    (on the CPU with `execution_device: cpu`, see OrtGpuOptions)."""
    execution_device = _options(target).execution_device
    route = TRT_EP if target.backend == "onnxruntime-tensorrt" else CUDA_EP
    if execution_device == "cuda":
        require_provider(route)
        preload()
    elif route == TRT_EP:
        raise BuildError("the onnxruntime-tensorrt route runs only on a GPU")
    model, precision_report = prepare_model(model_path, target, calibration)
    source = out_dir / "converted.onnx"
    onnx.save_model(model, str(source))
    optimized: Path | None = out_dir / ENGINE_FILE
    build_options = {k: v for k, v in CUDA_OPTIONS.items() if k not in _LOAD_TIME_ONLY}
    providers: list[Any] = [(CUDA_EP, build_options), "CPUExecutionProvider"]
    if execution_device == "cpu":
        providers = ["CPUExecutionProvider"]
    config: dict[str, Any] = {
        "backend": target.backend, "device": "cuda", "route": route,
        "execution_device": execution_device,
        "precision": effective_precision(target), "requested_precision": target.precision,
        "optimization": _options(target).optimization, "offline_optimization": "basic",
        "cuda_options": CUDA_OPTIONS, "cuda_graph": "auto", "io_binding": True,
        "onnxruntime": ort.__version__,
    }
    if route == TRT_EP:
        trt_options = tensorrt_provider_options(
            target, out_dir, calibration.cache_file if calibration else None)
        config["tensorrt_options"] = trt_options
        optimized = None  # the TensorRT provider compiles at run time
        shutil.copyfile(source, out_dir / ENGINE_FILE)
    try:
        ort_session(source, "basic", optimized_model_path=optimized, providers=providers)
    except Exception as exc:
        raise BuildError(f"onnxruntime ({route}) could not build an engine from {model_path}: "
                         f"{str(exc).splitlines()[0][:400]}") from None
    source.unlink()
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    report: dict[str, Any] = {"engine_file": ENGINE_FILE, "session": config,
                              "precision": precision_report}
    engine = onnx.load(str(out_dir / ENGINE_FILE))
    report["engine_ops"] = dict(sorted(Counter(n.op_type for n in engine.graph.node).items()))
    report["engine_bytes"] = (out_dir / ENGINE_FILE).stat().st_size
    if route == TRT_EP:
        report["tensorrt_cache"] = warm_tensorrt_cache(out_dir, config)
    return report


def tensorrt_provider_options(target: Target, engine_dir: Path, calibration_cache: Path | None
                              ) -> dict[str, Any]:
    """ORT's TensorRT provider with its engine and timing caches inside the engine directory.

    Paths are stored relative to the engine directory and resolved when loading. The
    INT8 route reads trtflow's calibration cache as a native TensorRT table (ORT looks
    for it in the engine cache folder), on a graph without Q/DQ.
    """
    cache = engine_dir / TRT_CACHE_DIR
    cache.mkdir(exist_ok=True)
    options: dict[str, Any] = {
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": TRT_CACHE_DIR,
        "trt_timing_cache_enable": "True", "trt_timing_cache_path": TRT_CACHE_DIR,
        "trt_fp16_enable": str(target.precision in ("fp16", "best")),
        "trt_int8_enable": str(target.precision in ("int8", "best")),
    }
    if target.precision in ("int8", "best"):
        if calibration_cache is None or not calibration_cache.is_file():
            raise BuildError("the onnxruntime-tensorrt int8 route needs the calibrate stage's "
                             "calibration cache")
        shutil.copyfile(calibration_cache, cache / calibration_cache.name)
        options.update(trt_int8_calibration_table_name=calibration_cache.name,
                       trt_int8_use_native_calibration_table="True")
    return options


def _resolved_trt_options(engine_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
    resolved = dict(options)
    for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
        if key in resolved:
            resolved[key] = str(engine_dir / resolved[key])
    return resolved


def warm_tensorrt_cache(engine_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Run once at batch 1 so the TensorRT provider compiles and writes its engine cache."""
    engine = OrtGpuEngine.load(engine_dir)
    feeds: dict[str, np.ndarray] = {}
    for spec in onnx.load(str(engine_dir / ENGINE_FILE)).graph.input:
        tensor = spec.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim]
        feeds[spec.name] = np.zeros(shape, _DTYPES.get(tensor.elem_type, np.float32))
    engine.run(feeds)
    files = sorted(p.name for p in (engine_dir / TRT_CACHE_DIR).iterdir())
    return {"files": files, "engines": [f for f in files if f.endswith(".engine")]}


def static_model(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]
                 ) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...] | None]]:
    """`model` with its inputs fixed to `shapes`; the output shapes where inference finds them."""
    fixed = onnx.ModelProto.FromString(model.SerializeToString())
    for inp in fixed.graph.input:
        if inp.name not in shapes:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != len(shapes[inp.name]):
            raise DataError(f"input '{inp.name}': got rank {len(shapes[inp.name])}, the "
                              f"engine expects rank {len(dims)}")
        for dim, size in zip(dims, shapes[inp.name], strict=True):
            if dim.HasField("dim_value") and dim.dim_value != size:
                raise DataError(f"input '{inp.name}': got shape {shapes[inp.name]}, the "
                                  f"engine fixes dimension {dim.dim_value}")
            dim.Clear()
            dim.dim_value = size
    del fixed.graph.value_info[:]
    for out in fixed.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        fixed = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception:  # unknown/contrib ops: outputs stay unknown, ORT allocates them
        pass
    out_shapes: dict[str, tuple[int, ...] | None] = {}
    for out in fixed.graph.output:
        dims = out.type.tensor_type.shape.dim
        known = out.type.tensor_type.HasField("shape") and all(d.HasField("dim_value")
                                                                for d in dims)
        out_shapes[out.name] = tuple(d.dim_value for d in dims) if known else None
    return fixed, out_shapes


@dataclass
class Profile:
    """One input-shape profile: a session on the GPU with inputs/outputs bound on the device."""

    session: ort.InferenceSession
    binding: Any
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    cuda_graph: bool
    note: str = ""
    runs: int = 0
    output_names: list[str] = field(default_factory=list)
    dtypes: dict[str, Any] = field(default_factory=dict)

    def feed(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy host arrays into the bound device inputs (same addresses: graph-safe)."""
        for name, value in self.inputs.items():
            value.update_inplace(np.ascontiguousarray(arrays[name], dtype=self.dtypes[name]))

    def run(self) -> None:
        """One inference on the bound buffers; ORT synchronizes its stream before returning."""
        self.session.run_with_iobinding(self.binding)
        self.runs += 1

    def fetch(self) -> dict[str, np.ndarray]:
        if self.outputs:
            return {n: self.outputs[n].numpy() for n in self.output_names}
        return dict(zip(self.output_names, self.binding.copy_outputs_to_cpu(), strict=True))


class OrtGpuEngine:
    """An ORT GPU engine: lazily one `Profile` per input-shape set (see the module doc)."""

    def __init__(self, engine_dir: Path, config: dict[str, Any],
                 cuda_graph: bool | None = None, cuda_options: dict[str, str] | None = None
                 ) -> None:
        self.engine_dir = engine_dir
        self.config = config
        self.model = onnx.load(str(engine_dir / ENGINE_FILE))
        self.input_names = [i.name for i in self.model.graph.input]
        self.output_names = [o.name for o in self.model.graph.output]
        self.ort_device = config.get("execution_device", "cuda")
        self.use_graph = (config.get("route") != TRT_EP) if cuda_graph is None else cuda_graph
        self.use_graph = self.use_graph and self.ort_device == "cuda"
        self.cuda_options = {**config.get("cuda_options", CUDA_OPTIONS), **(cuda_options or {})}
        self.profiles: dict[tuple[tuple[int, ...], ...], Profile] = {}

    @classmethod
    def load(cls, engine_dir: Path, cuda_graph: bool | None = None,
             cuda_options: dict[str, str] | None = None) -> OrtGpuEngine:
        config = json.loads((engine_dir / CONFIG_FILE).read_text())
        if config.get("execution_device", "cuda") == "cuda":
            require_provider(config.get("route", CUDA_EP))
            preload()
        return cls(engine_dir, config, cuda_graph, cuda_options)

    def _providers(self, graph: bool) -> list[Any]:
        if self.ort_device == "cpu":
            return ["CPUExecutionProvider"]
        cuda = dict(self.cuda_options)
        if graph:
            cuda["enable_cuda_graph"] = "1"
        providers: list[Any] = [(CUDA_EP, cuda), "CPUExecutionProvider"]
        if self.config.get("route") == TRT_EP:
            trt = _resolved_trt_options(self.engine_dir, self.config["tensorrt_options"])
            providers.insert(0, (TRT_EP, trt))
        return providers

    def _session(self, model: onnx.ModelProto, graph: bool) -> ort.InferenceSession:
        session = ort_session(model, self.config.get("optimization", "all"),
                              providers=self._providers(graph))
        wanted = self.config.get("route", CUDA_EP) if self.ort_device == "cuda" else None
        if wanted and wanted not in session.get_providers():
            # ORT's Python API falls back to the next provider when one fails to load;
            # an engine labelled TensorRT must not silently run on CUDA kernels.
            raise BuildError(f"{wanted} could not be loaded (session providers: "
                             f"{session.get_providers()}); for TensorRT, its libraries must "
                             "be installed")
        return session

    def profile(self, shapes: dict[str, tuple[int, ...]]) -> Profile:
        key = tuple(tuple(shapes[n]) for n in self.input_names)
        if key not in self.profiles:
            self.profiles[key] = self._make_profile(shapes)
        return self.profiles[key]

    def _make_profile(self, shapes: dict[str, tuple[int, ...]]) -> Profile:
        model, out_shapes = static_model(self.model, shapes)
        out_types = {o.name: _DTYPES.get(o.type.tensor_type.elem_type, np.float32)
                     for o in model.graph.output}
        in_types = {i.name: _DTYPES.get(i.type.tensor_type.elem_type, np.float32)
                    for i in model.graph.input}
        if self.use_graph and any(s is None for s in out_shapes.values()):
            # contrib ops (MultiHeadAttention, SkipLayerNorm) defeat ONNX shape inference:
            # one plain run on these shapes tells the output shapes a CUDA graph binds
            out_shapes = self._probe_output_shapes(model, shapes, in_types)
        graph = self.use_graph and all(s is not None for s in out_shapes.values())
        note = "" if graph or not self.use_graph else "output shapes unknown: no CUDA graph"
        try:
            return self._bind(model, shapes, in_types, out_shapes, out_types, graph, note)
        except Exception as exc:
            if not graph:
                raise BuildError(f"onnxruntime could not run {self.engine_dir} on the GPU: "
                                  f"{str(exc).splitlines()[0][:400]}") from None
            reason = f"CUDA graph not captured ({str(exc).splitlines()[0][:200]})"
            return self._bind(model, shapes, in_types, out_shapes, out_types, False, reason)

    def _probe_output_shapes(self, model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                             in_types: dict[str, Any]) -> dict[str, tuple[int, ...] | None]:
        feeds = {n: np.ones(shapes[n], in_types[n]) for n in self.input_names}
        try:
            outputs = self._session(model, False).run(None, feeds)
        except Exception:  # the plain profile below reports the failure
            return dict.fromkeys(self.output_names)
        return {n: tuple(o.shape) for n, o in zip(self.output_names, outputs, strict=True)}

    def _bind(self, model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
              in_types: dict[str, Any], out_shapes: dict[str, tuple[int, ...] | None],
              out_types: dict[str, Any], graph: bool, note: str) -> Profile:
        session = self._session(model, graph)
        binding = session.io_binding()
        inputs = {}
        for name in self.input_names:
            value = ort.OrtValue.ortvalue_from_shape_and_type(
                list(shapes[name]), in_types[name], self.ort_device, 0)
            binding.bind_ortvalue_input(name, value)
            inputs[name] = value
        outputs = {}
        for name in self.output_names:
            shape = out_shapes[name]
            if shape is None:
                binding.bind_output(name, self.ort_device, 0)
                continue
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), out_types[name],
                                                             self.ort_device, 0)
            binding.bind_ortvalue_output(name, value)
            outputs[name] = value
        profile = Profile(session, binding, inputs, outputs if len(outputs) ==
                          len(self.output_names) else {}, graph, note,
                          output_names=list(self.output_names), dtypes=in_types)
        # ORT captures the CUDA graph within the first runs: do them now, on real shapes, so
        # a capture failure surfaces here (and falls back) rather than in a timed loop.
        rng = np.random.default_rng(0)
        profile.feed({n: (rng.standard_normal(shapes[n]).astype(in_types[n])
                          if np.issubdtype(in_types[n], np.floating)
                          else np.zeros(shapes[n], in_types[n])) for n in self.input_names})
        for _ in range(3 if graph else 1):
            profile.run()
        return profile

    def bind(self, inputs: dict[str, np.ndarray]) -> Profile:
        """The profile for these inputs with them copied to the device: `run()` is then
        one inference on device-resident data (what a benchmark times)."""
        arrays = {n: inputs[n] for n in self.input_names}
        profile = self.profile({n: a.shape for n, a in arrays.items()})
        profile.feed(arrays)
        return profile

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        profile = self.bind(inputs)
        profile.run()
        return profile.fetch()

    def describe(self) -> list[dict[str, Any]]:
        return [{"shapes": [list(s) for s in key], "cuda_graph": p.cuda_graph, "note": p.note}
                for key, p in self.profiles.items()]


class OrtGpuBackend:
    """ONNX Runtime on an NVIDIA GPU, through its CUDA or its TensorRT provider."""

    precisions = ("fp32", "fp16", "int8", "best")
    libraries = ("onnxruntime", "onnxruntime-gpu", "onnx")
    options = OrtGpuOptions
    selectable = False

    def __init__(self, name: str) -> None:
        self.name = name

    def fingerprint(self, target: Target) -> dict[str, str]:
        from trtflow.backends import gpu_fingerprint

        return gpu_fingerprint(target)

    def build(self, model_path: Path, target: Target, out_dir: Path,
              calibration: Calibration | None) -> dict[str, Any]:
        if self.name == "onnxruntime-tensorrt" and target.precision in ("int8", "best") \
                and calibration:
            # TensorRT's provider keeps a tensor without a scale out of INT8: refuse that cache
            from trtflow.backends.tensorrt_plan import check_cache_complete

            check_cache_complete(calibration.cache_file, model_path)
        return _build(model_path, target, out_dir, calibration)

    def load(self, engine_dir: Path, threads: int | None = None, spinning: bool = True
             ) -> OrtGpuEngine:
        return OrtGpuEngine.load(engine_dir)


CUDA_BACKEND = OrtGpuBackend("onnxruntime-cuda")
TENSORRT_PROVIDER_BACKEND = OrtGpuBackend("onnxruntime-tensorrt")
