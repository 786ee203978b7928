"""Cached stage execution, independent of any orchestrator.

Each `Step` knows its version, which params sections it reads, how to compute
its cache key from its inputs, and how to produce its artifact. `run_step`
returns a cached artifact when the key exists, else produces it atomically.
Prefect tasks (`tasks/`) and `trtflow stage` (DVC) both call these.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from pydantic import BaseModel, Field

from trtflow import sources
from trtflow.backends import build_engine, gpu_fingerprint, load_engine
from trtflow.backends.onnxruntime_backend import OrtEngine, default_threads
from trtflow.datasets import open_data, tile_batch
from trtflow.errors import DataError, ParamsError
from trtflow.graph import cleanup as cleanup_mod
from trtflow.graph.parity import compare, ort_run
from trtflow.latency import host_fingerprint
from trtflow.params import DataSource, Params, Target
from trtflow.sources import builtin
from trtflow.stages import calibrate as calibrate_stage
from trtflow.stages import export as export_stage
from trtflow.stages import validate as validate_stage
from trtflow.store import ArtifactStore, make_key, tree_digest

LIBRARIES = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
             "torch": torch.__version__}
CLEANUP_VERSION = "cleanup-1"
BUILD_VERSION = "build-1"
CLEAN_FILE = "model.clean.onnx"
CLEANUP_REPORT = "cleanup_report.json"


class StageResult(BaseModel):
    """What a stage hands to the next one (and what Prefect caches): JSON only."""

    stage: str
    version: str
    key: str
    path: str
    digest: str
    report: dict[str, Any]
    seconds: float
    cached: bool = False
    prefect_state: str | None = Field(default=None, description="Prefect's state name, "
                                      "when run by the flow (Completed / Cached)")
    run_seconds: float = Field(default=0.0, description="time this run spent on the stage, "
                               "cache lookup included")

    def file(self, name: str) -> Path:
        return Path(self.path) / name


@dataclass
class Context:
    """Everything a stage needs besides its inputs: params, project root, store."""

    params: Params
    root: Path
    store: ArtifactStore
    remeasure: bool = False
    progress: Callable[[str], None] | None = None
    _model: sources.LoadedModel | None = field(default=None, repr=False)

    @classmethod
    def create(cls, params: Params, root: Path, store_dir: Path | None = None,
               remeasure: bool = False) -> Context:
        return cls(params, root, ArtifactStore(store_dir or root / ".trtflow" / "store"),
                   remeasure)

    def model(self) -> sources.LoadedModel:
        if self._model is None:
            self._model = sources.load_model(self.params.model, self.root, self.store)
        return self._model

    def target(self, name: str) -> Target:
        try:
            return self.params.targets[name]
        except KeyError:
            raise ParamsError(f"target '{name}' is not defined in params.targets "
                              f"(defined: {sorted(self.params.targets)})") from None

    def sample_inputs(self, batch: int) -> dict[str, np.ndarray]:
        src = self.params.model.source
        if src.builtin:
            return builtin.sample_inputs(src.builtin, batch)
        return sources.synthetic_inputs(self.model().inputs, batch)

    def input_specs(self) -> list:
        src = self.params.model.source
        if src.builtin:
            return builtin.BUILTIN_INPUTS[src.builtin]
        return self.model().inputs


def preflight(ctx: Context) -> None:
    """Check the model source and data files before any orchestration starts."""
    sources.source_digest(ctx.params.model, ctx.root)
    if ctx.params.model.source.onnx:
        ctx.model()
    specs = ctx.input_specs() if not ctx.params.model.source.factory else ctx.params.model.inputs
    for ds in (ctx.params.data.calibration, ctx.params.data.evaluation):
        if ds is not None and specs:
            open_data(ds, specs, ctx.root, ctx.params.data.batch_size)


@dataclass
class Step:
    name: str
    version: str
    key_parts: Callable[..., dict[str, Any]]
    produce: Callable[..., dict[str, Any]]


def step_key(step: Step, ctx: Context, *inputs: StageResult) -> str:
    return make_key(step.name, step.version, inputs=[i.digest for i in inputs],
                    libraries=LIBRARIES, **step.key_parts(ctx, *inputs))


def run_step(step: Step, ctx: Context, *inputs: StageResult) -> StageResult:
    key = step_key(step, ctx, *inputs)
    art = ctx.store.get(step.name, key)
    if art is not None:
        stored = art.meta()
        return StageResult(stage=step.name, version=step.version, key=key, path=str(art.path),
                           digest=art.digest, report=stored["report"],
                           seconds=stored["seconds"], cached=True)
    start = time.perf_counter()
    meta: dict[str, Any] = {"version": step.version}
    with ctx.store.writer(step.name, key, meta) as tmp:  # meta is written when complete
        report = step.produce(ctx, tmp, *inputs)
        meta.update(report=report, seconds=time.perf_counter() - start)
    art = ctx.store.get(step.name, key)
    assert art is not None
    return StageResult(stage=step.name, version=step.version, key=key, path=str(art.path),
                       digest=art.digest, report=report, seconds=meta["seconds"])


# --- export ------------------------------------------------------------------

def _export_key(ctx: Context) -> dict[str, Any]:
    return {"source": sources.source_digest(ctx.params.model, ctx.root),
            "params": ctx.params.section_digest("model", "export")}


def _export(ctx: Context, out: Path) -> dict[str, Any]:
    sample = ctx.sample_inputs(ctx.params.export.samples)
    return export_stage.export_model(ctx.model(), ctx.params.export, sample, out)


EXPORT = Step("export", export_stage.VERSION, _export_key, _export)


# --- cleanup -----------------------------------------------------------------

def _cleanup_key(ctx: Context, exported: StageResult) -> dict[str, Any]:
    return {"params": ctx.params.section_digest("cleanup")}


def _cleanup(ctx: Context, out: Path, exported: StageResult) -> dict[str, Any]:
    import json

    raw_path = exported.file(export_stage.MODEL_FILE)
    passes = tuple(cleanup_mod.PASSES[name] for name in ctx.params.cleanup.passes)
    cleaned, report = cleanup_mod.cleanup(onnx.load(str(raw_path)), passes)
    onnx.save_model(cleaned, str(out / CLEAN_FILE))
    sample = ctx.sample_inputs(ctx.params.export.samples)
    parity = compare(ort_run(raw_path, sample), ort_run(out / CLEAN_FILE, sample),
                     ctx.params.cleanup.atol, ctx.params.cleanup.rtol,
                     "cleanup parity (cleaned vs exported graph)")
    report["parity"] = parity.as_dict()
    (out / CLEANUP_REPORT).write_text(json.dumps(report, indent=2))
    return report


CLEANUP = Step("cleanup", CLEANUP_VERSION, _cleanup_key, _cleanup)


# --- build -------------------------------------------------------------------

def _build_key(ctx: Context, *inputs: StageResult, target: str) -> dict[str, Any]:
    parts: dict[str, Any] = {"target": ctx.target(target).model_dump(mode="json")}
    if ctx.target(target).precision == "int8":  # the int8 encoding follows the CPU's flags
        parts["simd"] = host_fingerprint()["simd"]
    parts.update(gpu_fingerprint(ctx.target(target)))
    return parts


def build_step(target: str) -> Step:
    def produce(ctx: Context, out: Path, cleaned: StageResult, *calibrated: StageResult
                ) -> dict[str, Any]:
        from trtflow.stages.calibrate import SCALES_FILE, read_float_layers, read_scales

        scales = read_scales(calibrated[0].file(SCALES_FILE)) if calibrated else None
        skip = read_float_layers(Path(calibrated[0].path)) if calibrated else []
        return build_engine(cleaned.file(CLEAN_FILE), ctx.target(target), out, scales,
                            host_fingerprint()["simd"].split(), skip,
                            Path(calibrated[0].path) if calibrated else None)

    return Step("build", BUILD_VERSION,
                functools.partial(_build_key, target=target), produce)


# --- validate ----------------------------------------------------------------

def _metric(ctx: Context) -> str:
    cfg = ctx.params.validate_
    if cfg.metric != "auto":
        return cfg.metric
    ev = ctx.params.data.evaluation
    return "top1" if ev is not None and ev.labels else "cosine"


# --- calibrate ---------------------------------------------------------------

def _calibrate_key(ctx: Context, cleaned: StageResult) -> dict[str, Any]:
    cal = ctx.params.data.calibration
    return {"params": ctx.params.section_digest("calibration", "data.calibration",
                                                "data.batch_size"),
            "metric": _metric(ctx),
            "calibration_data": data_digest(ctx.root, cal) if cal else None}


def _calibrate(ctx: Context, out: Path, cleaned: StageResult) -> dict[str, Any]:
    cal = ctx.params.data.calibration
    if cal is None:
        raise ParamsError("an int8 target needs data.calibration (an .npz of representative "
                          "inputs) in params")
    stream = open_data(cal, ctx.input_specs(), ctx.root, ctx.params.data.batch_size)
    total = min(len(stream), ctx.params.calibration.max_samples or len(stream))
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if ctx.progress:
            ctx.progress(f"calibrate: {done}/{total} samples")

    return calibrate_stage.calibrate(
        cleaned.file(CLEAN_FILE), (b.inputs for b in stream), ctx.params.calibration,
        default_threads(), out, progress, metric=_metric(ctx),
        selection=(b.inputs for b in stream), status=ctx.progress)


CALIBRATE = Step("calibrate", calibrate_stage.VERSION, _calibrate_key, _calibrate)


def _validate_key(ctx: Context, engine: StageResult, cleaned: StageResult, *, target: str
                  ) -> dict[str, Any]:
    ev = ctx.params.data.evaluation
    parts: dict[str, Any] = {
        "params": ctx.params.section_digest("validate", "data.evaluation", "model"),
        "source": sources.source_digest(ctx.params.model, ctx.root),
        "target": target,
        "host": host_fingerprint(),
        "threads": default_threads(),
        **gpu_fingerprint(ctx.target(target)),
    }
    if ev is not None:
        parts["evaluation_data"] = data_digest(ctx.root, ev)
    if ctx.remeasure:
        parts["remeasure"] = time.time_ns()
    return parts


def data_digest(root: Path, source: DataSource) -> str:
    """Identity of a data source: its file/folder digest, or the function's module file."""
    if source.function:
        import importlib.util

        spec = importlib.util.find_spec(source.function.partition(":")[0])
        origin = Path(spec.origin) if spec and spec.origin else None
        return f"{source.function}:{tree_digest(origin) if origin else 'unknown'}"
    p = Path(source.path or "")
    p = p if p.is_absolute() else root / p
    if not p.exists():
        raise DataError(f"data file {p} does not exist (run `dvc pull`, or `trtflow prepare` "
                        "for the demo data)")
    return tree_digest(p)


def validate_step(target: str) -> Step:
    def produce(ctx: Context, out: Path, engine_art: StageResult, cleaned: StageResult
                ) -> dict[str, Any]:
        threads = ctx.target(target).threads or default_threads()
        torch.set_num_threads(threads)
        engine = load_engine(Path(engine_art.path), threads=threads)
        reference, label = reference_runner(ctx, threads, ctx.target(target).device)
        specs = ctx.input_specs()
        ev = ctx.params.data.evaluation
        num_classes = _num_classes(reference, ctx)
        if ev is not None:
            batches: Any = open_data(ev, specs, ctx.root, ctx.params.data.batch_size,
                                     num_classes if ev.labels else None)
        else:
            batches = [_SyntheticBatch(ctx.sample_inputs(ctx.params.data.batch_size))]
        pool = next(iter(batches)).inputs

        def make_inputs(bs: int) -> dict[str, np.ndarray]:
            return tile_batch(pool, bs)

        cfg = ctx.params.validate_
        gates = ctx.target(target).gates
        if gates is not None:
            cfg = cfg.model_copy(update={"gates": gates})
        return validate_stage.validate(engine, reference, label, batches, make_inputs,
                                       cfg, _metric(ctx), target, out)

    return Step("validate", validate_stage.VERSION,
                functools.partial(_validate_key, target=target), produce)


@dataclass
class _SyntheticBatch:
    inputs: dict[str, np.ndarray]
    labels: None = None


def _num_classes(reference: Callable, ctx: Context) -> int:
    sample = ctx.sample_inputs(1)
    first = next(iter(reference(sample).values()))
    return int(first.reshape(1, -1).shape[1])


def reference_runner(ctx: Context, threads: int, device: str = "cpu"
                     ) -> tuple[Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], str]:
    """FP32 reference and latency baseline: PyTorch eager, or ORT FP32 on an ONNX source.
    A cuda target is compared with PyTorch eager FP32 on the same GPU."""
    model = ctx.model()
    if model.module is not None and device == "cuda":
        from trtflow.backends.gpu_reference import torch_cuda_runner

        return torch_cuda_runner(model.module, model.inputs, model.outputs), \
            "PyTorch eager FP32 on the GPU"
    if model.module is not None:
        module, specs, names = model.module, model.inputs, model.outputs

        def run_torch(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return export_stage.torch_outputs(module, specs, names, inputs)

        return run_torch, "PyTorch eager FP32"
    assert model.onnx_path is not None
    return OrtEngine.from_model(model.onnx_path, threads).run, \
        "ONNX Runtime FP32 on the source graph (no PyTorch model)"
