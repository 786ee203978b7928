"""An MLflow pyfunc over a trtflow engine directory (ONNX Runtime or OpenVINO).

Logged as MLflow "models from code": this file is copied into every logged
model and executed on load, so it must stay self-contained (numpy, mlflow and
the engine's runtime only; no trtflow import) and nothing is pickled. The
engine's manifest (`engine.json`) names the backend that built it. `mlflow
models predict` / `mlflow models serve` then run the engine exactly as trtflow
built it: ONNX Runtime's offline-optimized `engine.onnx` with the session
settings of `session.json`, or OpenVINO's `compiled.blob` with `openvino.json`.

Input: a dict of named arrays (tensor signature, as `{"inputs": {...}}` JSON),
or one array / DataFrame when the engine has a single input.
Output: a dict of named arrays, or one array when the engine has one output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
_OV_DTYPES = {"f32": np.float32, "f16": np.float16, "i64": np.int64, "i32": np.int32,
              "boolean": np.bool_}


class EngineModel(PythonModel):
    """Runs `artifacts["engine"]` with the runtime that built it (ONNX Runtime or OpenVINO)."""

    # The logged tensor signature describes the input; MLflow's type-hint schema (which
    # would otherwise wrap predict and warn that it has no hints) does not apply.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        engine_dir = Path(context.artifacts["engine"])
        manifest = engine_dir / "engine.json"
        backend = json.loads(manifest.read_text())["backend"] if manifest.is_file() else ""
        if backend == "openvino-cpu":
            self._load_openvino(engine_dir)
        else:
            self._load_onnxruntime(engine_dir)

    def _load_openvino(self, engine_dir: Path) -> None:
        import io

        import openvino as ov

        config = json.loads((engine_dir / "openvino.json").read_text())
        hint = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}[config["precision"]]
        props: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if config.get("threads"):
            props["INFERENCE_NUM_THREADS"] = int(config["threads"])
        core = ov.Core()
        compiled = core.import_model(io.BytesIO((engine_dir / "compiled.blob").read_bytes()),
                                     "CPU", props)
        request = compiled.create_infer_request()
        self.inputs = {p.get_any_name(): _OV_DTYPES.get(p.get_element_type().get_type_name(),
                                                        np.float32) for p in compiled.inputs}
        self.outputs = list(config["outputs"])

        def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            results = {p.get_any_name(): v for p, v in request.infer(feed).items()}
            return [np.array(results[name], copy=True) for name in self.outputs]

        self._run = run

    def _load_onnxruntime(self, engine_dir: Path) -> None:
        import onnxruntime as ort

        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        config = json.loads((engine_dir / "session.json").read_text())
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[config["optimization"]]
        if config.get("intra_op_threads"):
            opts.intra_op_num_threads = int(config["intra_op_threads"])
        opts.log_severity_level = 3
        for key, value in config.get("config_entries", {}).items():
            opts.add_session_config_entry(key, value)
        available = set(ort.get_available_providers())
        providers = [p for p in config["providers"] if p in available] or [
            "CPUExecutionProvider"]
        session = ort.InferenceSession(str(engine_dir / "engine.onnx"), opts,
                                       providers=providers)
        self.inputs = {i.name: _DTYPES.get(i.type, np.float32) for i in session.get_inputs()}
        self.outputs = [o.name for o in session.get_outputs()]
        self._run = lambda feed: session.run(self.outputs, feed)

    # no type hints: MLflow would read them as the input schema (the signature is that)
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        if isinstance(model_input, dict):
            missing = sorted(set(self.inputs) - set(model_input))
            if missing:
                raise ValueError(f"missing engine input(s) {missing}; expected "
                                 f"{sorted(self.inputs)}")
            feed: dict[str, np.ndarray] = {name: np.asarray(model_input[name], dtype=dtype)
                    for name, dtype in self.inputs.items()}
        elif len(self.inputs) == 1:
            values = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
            name, dtype = next(iter(self.inputs.items()))
            feed = {name: np.asarray(values, dtype=dtype)}
        else:
            raise ValueError(f"the engine has inputs {sorted(self.inputs)}: pass a dict of "
                             "named arrays")
        results = self._run(feed)
        if len(results) == 1:
            return results[0]
        return dict(zip(self.outputs, results, strict=True))


mlflow.models.set_model(EngineModel())
