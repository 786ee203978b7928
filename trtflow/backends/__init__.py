"""Engine backends: one module each, behind one interface, found in a registry by name.

`REGISTRY` is the one list of backends: params `backend` and `device` -> the module
object that builds them. A backend object declares
  - `name` (what engine manifests record), `precisions` (the target precisions it
    builds), `libraries` (the distributions whose versions shape its engines),
  - `options`: its pydantic options model (`targets.NAME.options` in params, validated
    when the params load, so nothing outside the module knows its settings),
  - `selectable`: whether `precision: best` times it by default on its device,
  - `fingerprint(target)`: what a build depends on besides the graph (CPU flags, GPU),
  - `build(model_path, target, out_dir, calibration)`: write an engine directory,
    return its report,
  - `load(engine_dir, threads, spinning)`: an `Engine` that runs it (what validate,
    select, the benchmarks and the MLflow pyfunc all call).
`build_engine` writes `engine.json` (the backend's name, the target) beside the
engine, and `load_engine` reads it: nothing guesses from file contents. Adding a
backend is one module plus one line in `REGISTRY` (docs/architecture.md). (Polygraphy's
runners share one interface the same way; its CLI picks them by name.)
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

from trtflow.errors import BuildError
from trtflow.quant.artifact import Calibration

if TYPE_CHECKING:
    import numpy as np

    from trtflow.params import Target

__all__ = ["REGISTRY", "Backend", "BackendOptions", "Calibration", "Engine", "backend_for",
           "build_engine", "load_engine"]

MANIFEST_FILE = "engine.json"

# (params `backend`, `device`) -> "module:object". One line per backend.
REGISTRY: dict[tuple[str, str], str] = {
    ("onnxruntime", "cpu"): "trtflow.backends.onnxruntime_backend:BACKEND",
    ("onnxruntime", "cuda"): "trtflow.backends.ort_cuda:CUDA_BACKEND",
    ("onnxruntime-tensorrt", "cuda"): "trtflow.backends.ort_cuda:TENSORRT_PROVIDER_BACKEND",
    ("tensorrt", "cuda"): "trtflow.backends.tensorrt_backend:BACKEND",
    ("openvino", "cpu"): "trtflow.backends.openvino_backend:BACKEND",
    ("tensorrt-rtx", "cuda"): "trtflow.backends.tensorrt_rtx:BACKEND",
    ("torch-inductor", "cpu"): "trtflow.backends.torch_inductor:BACKEND",
    ("torch-inductor", "cuda"): "trtflow.backends.torch_inductor:BACKEND",
}


class BackendOptions(BaseModel):
    """A backend's own target settings (`targets.NAME.options`); each backend subclasses
    it. Strict like every params section: unknown fields and loose types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)

    def ignored(self, precision: str) -> list[tuple[str, str]]:
        """(field, why) for each option set here that a `precision` build would not read."""
        return []

    def given(self, field: str) -> bool:
        """Set in the params to something other than its default."""
        default = type(self).model_fields[field].get_default(call_default_factory=True)
        return field in self.model_fields_set and getattr(self, field) != default


class Engine(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    name: str
    precisions: tuple[str, ...]
    libraries: tuple[str, ...]
    options: type[BackendOptions]
    selectable: bool

    def fingerprint(self, target: Target) -> dict[str, str]: ...

    def build(self, model_path: Path, target: Target, out_dir: Path,
              calibration: Calibration | None) -> dict[str, Any]: ...

    def load(self, engine_dir: Path, threads: int | None = None, spinning: bool = True
             ) -> Engine: ...


def backend_names() -> list[str]:
    """The params `backend` values, in registry order."""
    return list(dict.fromkeys(b for b, _ in REGISTRY))


def registered(backend: str, device: str) -> Backend | None:
    """The backend registered for (backend, device), or None."""
    where = REGISTRY.get((backend, device))
    return None if where is None else _resolve(where)


def selectable(device: str) -> list[str]:
    """The params `backend` names `precision: best` times by default on `device`."""
    out = []
    for (name, dev), where in REGISTRY.items():
        if dev == device and _resolve(where).selectable:
            out.append(name)
    return out


def backend_for(target: Target) -> Backend:
    """The registered backend of a target's (backend, device)."""
    backend = registered(target.backend, target.device)
    if backend is None:
        offered = ", ".join(f"{b}/{d}" for b, d in REGISTRY)
        raise BuildError(f"backend '{target.backend}' on device '{target.device}' is not "
                         f"available (registered: {offered}; see the README's feature table)")
    return backend


def backend_named(name: str) -> Backend:
    """The backend whose engines record `name` in their manifest."""
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
    if target.precision not in backend.precisions:
        raise BuildError(f"backend '{target.backend}' on {target.device} builds precisions "
                         f"{list(backend.precisions)}, not '{target.precision}'")
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
    """The engine in `engine_dir`, loaded by the backend its manifest names."""
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
