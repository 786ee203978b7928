"""An MLflow pyfunc over a trtflow engine directory, run by the backend that built it.

Logged as MLflow "models from code": this file is executed on load and nothing is
pickled. It loads the engine through `trtflow.backends.load_engine`, the same load path
validate and the benchmarks use (the manifest `engine.json` names the backend), so
`mlflow models predict` / `mlflow models serve` run the engine exactly as trtflow built
and measured it: ONNX Runtime's `engine.onnx` with its session settings, OpenVINO's
compiled blob with its properties. Outside an environment with trtflow installed, the
model carries the `trtflow` package itself (`CODE_PATHS`, MLflow's `code_paths`), not a
copy of any backend.

Input: a dict of named arrays (tensor signature, as `{"inputs": {...}}` JSON),
or one array / DataFrame when the engine has a single input.
Output: a dict of named arrays, or one array when the engine has one output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

# What `mlflow.pyfunc.log_model(code_paths=...)` ships beside this file: the trtflow package
CODE_PATHS = [str(Path(__file__).resolve().parents[1])]
# What the backends' load paths import besides their runtime (onnxruntime / openvino)
REQUIREMENTS = ("numpy", "onnx", "pydantic", "mlflow")


class EngineModel(PythonModel):
    """Runs `artifacts["engine"]` with the backend that built it."""

    # The logged tensor signature describes the input; MLflow's type-hint schema (which
    # would otherwise wrap predict and warn that it has no hints) does not apply.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from trtflow.backends import load_engine

        engine = load_engine(Path(context.artifacts["engine"]))
        dtypes = getattr(engine, "input_dtypes", {})
        self.inputs = {name: dtypes.get(name, np.float32) for name in engine.input_names}
        self.outputs = list(engine.output_names)
        self._engine = engine

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
        results = self._engine.run(feed)
        if len(self.outputs) == 1:
            return results[self.outputs[0]]
        return {name: results[name] for name in self.outputs}


mlflow.models.set_model(EngineModel())
