"""TensorRT engines built and run through NVIDIA Polygraphy (TensorRT 10 and 11).

Polygraphy (the optional `tensorrt` extra, imported lazily here) maintains the
TensorRT API differences across versions; trtflow composes its loaders:
`NetworkFromOnnxPath` (strongly typed where the plan says so) ->
`CreateConfig` (precision flags on 10, TF32 off, one profile for every dynamic axis,
the cache-only calibrator on 10, the timing cache) -> `EngineFromNetwork` (saving the
timing cache) -> `SaveEngine`; engines run through `TrtRunner`. What Polygraphy lacks
stays here: the fusion report from the engine inspector (tensorrt_report.py). The
decisions before the build (graph, flags, profile, cache completeness) are pure logic
in tensorrt_plan.py, tested without TensorRT.

TensorRT is installable on no machine of this project: the build is type-checked
against typings/tensorrt and typings/polygraphy (mypy), and its tests
(tests/unit/test_tensorrt_backend.py, marker `tensorrt`) run only where
`tensorrt.Builder` exists, e.g. in docker/tensorrt.Dockerfile (`make trt-check`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtflow.backends.tensorrt_network import (
    network_layers,
    precision_report,
    profile_shapes,
    typed_graph,
)
from trtflow.backends.tensorrt_plan import (
    PLANS,
    BuildPlan,
    ConfigOptions,
    TensorRTOptions,
    check_cache_complete,
    create_config,
    graph_for,
    plan_build,
)
from trtflow.backends.tensorrt_report import fusion_report, onnx_nodes
from trtflow.errors import BuildError, DataError

if TYPE_CHECKING:
    import tensorrt as trt

    from trtflow.params import Target
    from trtflow.quant.artifact import Calibration

ENGINE_FILE = "model.engine"
CONFIG_FILE = "tensorrt.json"
LAYERS_FILE = "layers.json"
FUSION_FILE = "fusion_report.json"
PRECISION_FILE = "precision_report.json"
TIMING_FILE = "timing.cache"
WORKSPACE_BYTES = 4 << 30


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
    """Return if a real TensorRT and Polygraphy are importable, else a BuildError saying
    which is missing."""
    if installed_version() is None:
        raise BuildError("backend 'tensorrt' needs NVIDIA TensorRT 10 or 11 (no module "
                         "'tensorrt' with a Builder); install it on a machine with an NVIDIA "
                         "GPU (docker/tensorrt.Dockerfile), or use backend 'onnxruntime' "
                         "with device 'cuda'")
    try:
        import polygraphy  # noqa: F401
    except ImportError:
        raise BuildError("backend 'tensorrt' builds through NVIDIA Polygraphy: install "
                         "trtflow's 'tensorrt' extra (pip install 'trtflow[tensorrt]')") from None


def major_version() -> int:
    import tensorrt as trt

    return int(trt.__version__.split(".")[0])


def timing_cache_path() -> Path:
    """One timing cache per GPU and TensorRT version (TRTFLOW_TIMING_CACHE_DIR, default
    `.trtflow/tensorrt` under the working directory), so later builds skip kernel timing."""
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


def _calibrator(plan: BuildPlan, calibration: Calibration | None, out_dir: Path
                ) -> trt.IInt8Calibrator | None:
    """TensorRT <= 10 implicit INT8: Polygraphy's IInt8EntropyCalibrator2 serving a copy of
    trtflow's calibration.cache (a copy, since TensorRT writes the cache back) and no
    batches: with a cache TensorRT reads the scales and skips calibrating."""
    if not plan.calibrator:
        return None
    import tensorrt as trt
    from polygraphy.backend.trt import Calibrator

    assert calibration is not None  # checked by check_cache_complete
    copy = out_dir / calibration.cache_file.name
    shutil.copyfile(calibration.cache_file, copy)
    return Calibrator([], cache=str(copy), BaseClass=trt.IInt8EntropyCalibrator2)


def _build(model_path: Path, target: Target, out_dir: Path, calibration: Calibration | None,
           max_batch: int = 32) -> dict[str, Any]:
    """Build `out_dir/model.engine` with a timing cache, layer JSON and fusion report."""
    if target.device != "cuda":
        raise BuildError(f"backend 'tensorrt' runs on device 'cuda', not '{target.device}'")
    if target.precision in ("int8", "best"):  # before TensorRT: runs (and is tested) anywhere
        if calibration is None:
            raise BuildError(f"a tensorrt {target.precision} target needs the calibrate stage's "
                             "output")
        check_cache_complete(calibration.cache_file, model_path)
    require_tensorrt()
    import tensorrt as trt
    from polygraphy.backend.trt import EngineFromNetwork, NetworkFromOnnxPath, SaveEngine
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    plan = plan_build(target, major_version())
    graph = graph_for(plan, model_path, calibration)
    if plan.graph in ("clean_fp16", "clean_bf16"):  # 11: the typed graph TensorRT-RTX gets too
        graph, _ = typed_graph(str(target.precision), model_path, calibration, out_dir)
    timing_path = timing_cache_path()
    timing_path.parent.mkdir(parents=True, exist_ok=True)
    reused = timing_path.stat().st_size if timing_path.is_file() else 0
    options = ConfigOptions(
        timing_cache=timing_path if reused else None,
        calibrator=_calibrator(plan, calibration, out_dir),
        profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: WORKSPACE_BYTES})
    config = create_config(plan, profile_shapes(graph, max_batch), options)
    # parsed once here, so the precision report reads the same network the engine is built from
    network = NetworkFromOnnxPath(str(graph), strongly_typed=plan.strongly_typed)()
    precision = precision_report(network_layers(network[1]))
    precision["strongly_typed"] = plan.strongly_typed  # 10 weakly typed: flags decide too
    (out_dir / PRECISION_FILE).write_text(json.dumps(precision, indent=2))
    engine_path = out_dir / ENGINE_FILE
    try:
        with G_LOGGER.verbosity(G_LOGGER.WARNING):
            engine = SaveEngine(EngineFromNetwork(network, config,
                                                  save_timing_cache=str(timing_path)),
                                path=str(engine_path))()
    except PolygraphyException as exc:
        raise BuildError(f"TensorRT {trt.__version__} could not build an engine from {graph}: "
                         f"{' '.join(str(exc).split())[:600]}") from None
    shutil.copyfile(timing_path, out_dir / TIMING_FILE)
    layers_json = engine.create_engine_inspector().get_engine_information(
        trt.LayerInformationFormat.JSON)
    (out_dir / LAYERS_FILE).write_text(layers_json)
    fusion = fusion_report(json.loads(layers_json), onnx_nodes(graph))
    (out_dir / FUSION_FILE).write_text(json.dumps(fusion, indent=2))

    meta = {"backend": "tensorrt", "device": "cuda", "tensorrt": trt.__version__,
            "precision": target.precision, "plan": plan.as_dict(), "graph": graph.name,
            "timing_cache": {"path": str(timing_path), "reused_bytes": reused,
                             "saved_bytes": timing_path.stat().st_size}}
    (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return {"engine_file": ENGINE_FILE, "engine_bytes": engine_path.stat().st_size,
            "tensorrt": meta, "fusion": {k: fusion[k] for k in (
                "layers", "onnx_nodes", "fused_layers", "layer_types", "unmapped_onnx_nodes")},
            "precision": {k: v for k, v in precision.items() if k != "rows"}}


class TrtEngine:
    """A serialized engine run through Polygraphy's TrtRunner (activated once, at load)."""

    def __init__(self, engine_path: Path) -> None:
        import tensorrt as trt
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        self.runner = TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path))))
        self.runner.activate()
        engine: trt.ICudaEngine = self.runner.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = [engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
        self.input_names = [n for n, inp in zip(names, is_input, strict=True) if inp]
        self.output_names = [n for n, inp in zip(names, is_input, strict=True) if not inp]

    @classmethod
    def load(cls, engine_dir: Path) -> TrtEngine:
        require_tensorrt()
        from polygraphy.exception import PolygraphyException

        try:
            return cls(engine_dir / ENGINE_FILE)
        except PolygraphyException as exc:
            raise BuildError(f"TensorRT {installed_version()} could not load "
                             f"{engine_dir / ENGINE_FILE} (built by another TensorRT or GPU?): "
                             f"{' '.join(str(exc).split())[:300]}") from None

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise DataError(f"TensorRT engine input(s) {missing} missing (got {sorted(inputs)})")
        from polygraphy.exception import PolygraphyException

        try:
            outputs = self.runner.infer({n: np.ascontiguousarray(inputs[n])
                                         for n in self.input_names})
        except PolygraphyException as exc:
            shapes = {n: list(inputs[n].shape) for n in self.input_names}
            raise DataError(f"TensorRT engine cannot run inputs {shapes} (outside its "
                            f"optimization profile?): {' '.join(str(exc).split())[:300]}"
                            ) from None
        return {n: np.asarray(outputs[n], dtype=np.float32) for n in self.output_names}


class TensorRTBackend:
    """NVIDIA TensorRT 10/11 through Polygraphy (where a real TensorRT loads)."""

    name = "tensorrt"
    precisions = tuple(PLANS)
    libraries = ("onnx", "polygraphy", "nvidia-modelopt")  # modelopt: typed fp16/bf16 graphs
    options = TensorRTOptions
    selectable = False

    def fingerprint(self, target: Target) -> dict[str, str]:
        from trtflow.backends import gpu_fingerprint

        return {**gpu_fingerprint(target), "tensorrt": installed_version() or "none"}

    def build(self, model_path: Path, target: Target, out_dir: Path,
              calibration: Calibration | None) -> dict[str, Any]:
        return _build(model_path, target, out_dir, calibration)

    def load(self, engine_dir: Path, threads: int | None = None, spinning: bool = True
             ) -> TrtEngine:
        return TrtEngine.load(engine_dir)


BACKEND = TensorRTBackend()
