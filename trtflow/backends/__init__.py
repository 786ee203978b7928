"""Engine backends behind one small interface.

`build(model_path, target, out_dir) -> dict` writes an engine directory;
`load(engine_dir) -> Engine`; `Engine.run(inputs) -> dict[name, array]`.
One module per backend; optional libraries are imported inside that module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trtflow.errors import BuildError
from trtflow.params import Target


class Engine(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def build_engine(model_path: Path, target: Target, out_dir: Path) -> dict[str, Any]:
    if target.backend == "onnxruntime":
        from trtflow.backends import onnxruntime_backend

        return onnxruntime_backend.build(model_path, target, out_dir)
    raise BuildError(f"backend '{target.backend}' ({target.device}, {target.precision}) is not "
                     "available in this build of trtflow yet (see the README's feature table)")


def load_engine(engine_dir: Path, threads: int | None = None) -> Engine:
    from trtflow.backends import onnxruntime_backend

    return onnxruntime_backend.OrtEngine.load(engine_dir, threads=threads)
