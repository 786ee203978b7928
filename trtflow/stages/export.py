"""export: torch module -> raw ONNX graph (no constant folding), checked against PyTorch."""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from trtflow.errors import ModelError
from trtflow.graph.parity import compare, ort_run
from trtflow.params import ExportConfig, TensorSpec
from trtflow.sources import LoadedModel, check_onnx_file

if TYPE_CHECKING:  # imported by the functions that export: a cached run needs no torch
    import torch

    from trtflow.context import Context

VERSION = "export-1"
MODEL_FILE = "model.onnx"


def torch_outputs(module: torch.nn.Module, specs: list[TensorSpec], output_names: list[str],
                  inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the eager module on named numpy inputs; outputs by name, as float32 numpy."""
    import torch

    with torch.inference_mode():
        out = module(*(torch.from_numpy(np.ascontiguousarray(inputs[s.name])) for s in specs))
    outs = out if isinstance(out, tuple | list) else (out,)
    if len(outs) != len(output_names):
        raise ModelError(f"the model returned {len(outs)} outputs, params name "
                         f"{len(output_names)} ({output_names})")
    return {n: o.detach().float().numpy() for n, o in zip(output_names, outs, strict=True)}


def _dynamic_shapes(specs: list[TensorSpec]) -> tuple[dict[int, Any], ...]:
    import torch

    dims: dict[str, Any] = {}
    shapes = []
    for spec in specs:
        axes = {}
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str):
                axes[axis] = dims.setdefault(dim, torch.export.Dim(_identifier(dim)))
        shapes.append(axes)
    return tuple(shapes)


def _identifier(name: str) -> str:
    ident = "".join(c if c.isalnum() else "_" for c in name)
    return ident if ident[:1].isalpha() else f"d_{ident}"


def export_model(model: LoadedModel, cfg: ExportConfig, sample: dict[str, np.ndarray],
                 out_dir: Path) -> dict[str, Any]:
    """Write `out_dir/model.onnx`; check ORT vs PyTorch on `sample` within tolerance."""
    import torch

    target = out_dir / MODEL_FILE
    if model.onnx_path is not None:  # an ONNX source: nothing to export, keep one file
        # one self-contained file (external data folded in; graphs over 2 GB need work)
        onnx.save_model(check_onnx_file(model.onnx_path), str(target))
        return {"exported": False, "reason": "source is ONNX", "parity": None}
    assert model.module is not None
    args = tuple(torch.from_numpy(sample[s.name]) for s in model.inputs)
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model.module, args, str(target), dynamo=True, optimize=False,
                external_data=False, do_constant_folding=False, opset_version=cfg.opset,
                input_names=[s.name for s in model.inputs], output_names=model.outputs,
                dynamic_shapes=_dynamic_shapes(model.inputs), verbose=False,
            )
        except Exception as exc:
            raise ModelError(f"torch.onnx.export failed: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:400]}") from None
    check_opset(target, cfg.opset)
    check_unique_names(target, model.outputs)
    reference = torch_outputs(model.module, model.inputs, model.outputs, sample)
    parity = compare(reference, ort_run(target, sample), cfg.atol, cfg.rtol,
                     "export parity (ONNX Runtime vs PyTorch)")
    return {"exported": True, "opset": cfg.opset, "parity": parity.as_dict()}


# The dynamo exporter writes opset >= this itself; lower opsets are down-converted by
# ONNX's version converter, which handles some graphs and not others.
NATIVE_MIN_OPSET = 18


def check_opset(path: Path, wanted: int) -> None:
    """`export.opset` is honoured or the export fails: the exporter silently keeps its own
    opset when a down-conversion fails, so the written graph is read back and checked."""
    model = onnx.load(str(path), load_external_data=False)
    got = next((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), None)
    if got != wanted:
        raise ModelError(f"export.opset: {wanted} was asked, but the exporter wrote opset "
                         f"{got}: torch's exporter writes opset >= {NATIVE_MIN_OPSET} and ONNX's "
                         f"version converter could not convert this model down to {wanted}; "
                         f"use an opset from {NATIVE_MIN_OPSET} to {_max_opset()}")


def check_unique_names(path: Path, outputs: list[str]) -> None:
    """Every tensor is defined once. The exporter renames the graph outputs to
    `model.outputs` without checking them against the names inside (DistilBERT's
    `embedding` output met its own `embedding` tensor): ONNX Runtime then refuses the
    graph with 'Duplicate definition', which would surface as a parity failure."""
    graph = onnx.load(str(path), load_external_data=False).graph
    defined = [i.name for i in graph.input] + [i.name for i in graph.initializer] + [
        o for node in graph.node for o in node.output if o]
    twice = sorted(n for n, count in collections.Counter(defined).items() if count > 1)
    if twice:
        clash = [n for n in twice if n in outputs]
        hint = (f"model.outputs {clash} collide with tensors of the same name inside the "
                "model; choose other output names" if clash else "the exporter wrote them")
        raise ModelError(f"the exported graph defines {twice[:5]} more than once: {hint}")


def _max_opset() -> int:
    """The schema's upper bound of `export.opset`."""
    return next(int(m.le) for m in ExportConfig.model_fields["opset"].metadata
                if getattr(m, "le", None) is not None)


@contextlib.contextmanager
def _quiet():  # type: ignore[no-untyped-def]
    """The dynamo exporter prints progress lines to stdout, and its version converter logs
    a traceback when a down-conversion fails (reported by `check_opset` instead); keep
    the CLI output clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def run(ctx: Context, target: str | None, out: Path) -> dict[str, Any]:
    """The plan's export step: the params' model, export settings and samples."""
    sample = ctx.sample_inputs(ctx.params.export.samples)
    report = export_model(ctx.model(), ctx.params.export, sample, out)
    _check_labels(ctx, out / MODEL_FILE)
    return report


def _check_labels(ctx: Context, exported: Path) -> None:
    """Labels vs the classes of a model whose class count only its export shows (factory,
    `.pt2`, MLflow sources; preflight checks ONNX and builtin sources): raised here, the
    export artifact is never committed, so bad labels leave the store as it was."""
    from trtflow.datasets import open_data
    from trtflow.preflight import output_classes

    ev = ctx.params.data.evaluation
    if ev is None or not ev.labels:
        return
    classes = output_classes(onnx.load(str(exported), load_external_data=False))
    if classes is not None:  # npz labels and image class folders are checked on open
        open_data(ev, ctx.input_specs(), ctx.root, ctx.params.data.batch_size, classes)
