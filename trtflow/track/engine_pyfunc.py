"""An MLflow pyfunc over a trtflow ONNX Runtime engine directory.

Logged as MLflow "models from code": this file is copied into every logged
model and executed on load, so it must stay self-contained (numpy, onnxruntime
and mlflow only; no trtflow import) and nothing is pickled. `mlflow models
predict` / `mlflow models serve` then run the engine exactly as trtflow built
it: the offline-optimized `engine.onnx` with the session settings of
`session.json`.

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
import onnxruntime as ort
from mlflow.pyfunc import PythonModel

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


class OrtEngineModel(PythonModel):
    """Runs `artifacts["engine"]` (engine.onnx + session.json) with ONNX Runtime."""

    # The logged tensor signature describes the input; MLflow's type-hint schema (which
    # would otherwise wrap predict and warn that it has no hints) does not apply.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        engine_dir = Path(context.artifacts["engine"])
        config = json.loads((engine_dir / "session.json").read_text())
        opts = ort.SessionOptions()
        opts.graph_optimization_level = _LEVELS[config["optimization"]]
        if config.get("intra_op_threads"):
            opts.intra_op_num_threads = int(config["intra_op_threads"])
        opts.log_severity_level = 3
        for key, value in config.get("config_entries", {}).items():
            opts.add_session_config_entry(key, value)
        available = set(ort.get_available_providers())
        providers = [p for p in config["providers"] if p in available] or [
            "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(engine_dir / "engine.onnx"), opts,
                                            providers=providers)
        self.inputs = {i.name: _DTYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]

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
        results = self.session.run(self.outputs, feed)
        if len(results) == 1:
            return results[0]
        return dict(zip(self.outputs, results, strict=True))


mlflow.models.set_model(OrtEngineModel())
