"""Engine backends: one module each, behind one interface, found in a registry by name.

A backend module exposes `BACKEND`, an object with
  - `name` and `libraries` (the distributions whose versions shape its engines),
  - `fingerprint(target)`: what a build depends on besides the graph (CPU flags, GPU),
  - `build(model_path, target, out_dir, calibration)`: write an engine directory,
    return its report,
  - `load(engine_dir, threads, spinning)`: an `Engine` that runs it.
`build_engine` writes `engine.json` (the backend's name, the target) beside the
engine, and `load_engine` reads it: nothing guesses from file contents. Adding a
backend is one module plus one line in `REGISTRY`. (Polygraphy's runners share one
interface the same way; its CLI picks them by name.)
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from trtflow.errors import BuildError
from trtflow.params import Target

if TYPE_CHECKING:
    import numpy as np

MANIFEST_FILE = "engine.json"

# (params `backend`, `device`) -> "module:object". One line per backend.
REGISTRY: dict[tuple[str, str], str] = {
    ("onnxruntime", "cpu"): "trtflow.backends.onnxruntime_backend:BACKEND",
    ("onnxruntime", "cuda"): "trtflow.backends.ort_cuda:CUDA_BACKEND",
    ("onnxruntime-tensorrt", "cuda"): "trtflow.backends.ort_cuda:TENSORRT_PROVIDER_BACKEND",
    ("tensorrt", "cuda"): "trtflow.backends.tensorrt_backend:BACKEND",
    ("openvino", "cpu"): "trtflow.backends.openvino_backend:BACKEND",
}


class Engine(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Calibration:
    """The calibrate stage's directory, as a backend reads it: amax per tensor, the layers
    kept in float, the TensorRT-placement Q/DQ model and the TensorRT calibration cache."""

    path: Path

    def amax(self) -> dict[str, float]:
        from trtflow.stages.calibrate import SCALES_FILE, read_scales

        return read_scales(self.path / SCALES_FILE)

    def float_layers(self) -> list[str]:
        from trtflow.stages.calibrate import read_float_layers

        return read_float_layers(self.path)


class Backend(Protocol):
    name: str
    libraries: tuple[str, ...]

    def fingerprint(self, target: Target) -> dict[str, str]: ...

    def build(self, model_path: Path, target: Target, out_dir: Path,
              calibration: Calibration | None) -> dict[str, Any]: ...

    def load(self, engine_dir: Path, threads: int | None = None, spinning: bool = True
             ) -> Engine: ...


def backend_for(target: Target) -> Backend:
    """The registered backend of a target's (backend, device)."""
    where = REGISTRY.get((target.backend, target.device))
    if where is None:
        offered = ", ".join(f"{b}/{d}" for b, d in REGISTRY)
        raise BuildError(f"backend '{target.backend}' on device '{target.device}' is not "
                         f"available (registered: {offered}; see the README's feature table)")
    return _resolve(where)


def backend_named(name: str) -> Backend:
    for where in REGISTRY.values():
        backend = _resolve(where)
        if backend.name == name:
            return backend
    raise BuildError(f"no backend named '{name}' is registered")


def _resolve(where: str) -> Backend:
    module, _, attr = where.partition(":")
    backend: Backend = getattr(importlib.import_module(module), attr)
    return backend


def build_engine(model_path: Path, target: Target, out_dir: Path,
                 calibration: Calibration | None = None) -> dict[str, Any]:
    """Build an engine for `target` into `out_dir` and record which backend made it."""
    if target.precision in ("int8", "fp8") and calibration is None:
        raise BuildError(f"a {target.precision} target needs the calibrate stage's output")
    backend = backend_for(target)
    report = backend.build(model_path, target, out_dir, calibration)
    manifest = {"backend": backend.name, "target": target.model_dump(mode="json")}
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    report["backend"] = backend.name
    return report


def engine_backend(engine_dir: Path) -> str:
    """The name of the backend that built `engine_dir`, from its manifest."""
    manifest = engine_dir / MANIFEST_FILE
    try:
        return str(json.loads(manifest.read_text())["backend"])
    except FileNotFoundError:
        raise BuildError(f"{engine_dir} is not a trtflow engine directory ({MANIFEST_FILE} "
                         "is missing)") from None
    except (ValueError, KeyError, TypeError):
        raise BuildError(f"{manifest} is not a valid engine manifest (expected JSON with a "
                         "'backend' field)") from None


def load_engine(engine_dir: Path, threads: int | None = None, spinning: bool = True) -> Engine:
    return backend_named(engine_backend(engine_dir)).load(engine_dir, threads, spinning)


def backend_fingerprint(target: Target) -> dict[str, Any]:
    """What a target's engines depend on besides the graph: the backend, its libraries'
    versions and the hardware facts it names (part of the build and validate keys)."""
    from trtflow.stage import library_version

    backend = backend_for(target)
    return {"backend": backend.name,
            "backend_libraries": {lib: library_version(lib) for lib in backend.libraries},
            **backend.fingerprint(target)}


def gpu_fingerprint(target: Target) -> dict[str, str]:
    """The GPU and CUDA version a cuda target builds and measures on ('none' without one)."""
    if target.device != "cuda":
        return {}
    parts = {"gpu": "none"}
    try:
        import torch

        if torch.cuda.is_available():
            parts["gpu"] = torch.cuda.get_device_name(0)
            parts["cuda"] = str(torch.version.cuda)
    except Exception:  # no torch CUDA: the build itself will say what is missing
        pass
    return parts
