"""`trtflow inspect` and `trtflow init`: look at a model source, start a params file."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

import yaml

from trtflow.errors import ModelError, ParamsError
from trtflow.params import BUILTIN_MODELS, ModelConfig, ModelSource, parse_params


def source_from_arg(arg: str) -> ModelSource:
    """Guess the source kind from how the argument looks."""
    if arg in BUILTIN_MODELS:
        return ModelSource(builtin=arg)  # type: ignore[arg-type]
    if arg.startswith("models:/"):
        return ModelSource(mlflow=arg)
    if arg.endswith(".onnx"):
        return ModelSource(onnx=arg)
    if arg.endswith(".pt2"):
        return ModelSource(exported_program=arg)
    if re.fullmatch(r"[\w.]+:\w+", arg):
        return ModelSource(factory=arg)
    raise ParamsError(f"cannot tell what kind of model source '{arg}' is: expected a .onnx "
                      f"or .pt2 path, 'package.module:function', models:/NAME/VERSION, or one "
                      f"of {', '.join(BUILTIN_MODELS)}")


def describe(arg: str, root: Path) -> dict[str, Any]:
    """Inputs, outputs, op histogram and parameter count of a model source."""
    from trtflow import sources
    from trtflow.store import ArtifactStore

    source = source_from_arg(arg)
    name = _model_name(arg)
    cfg = ModelConfig(name=name, source=source)
    info: dict[str, Any] = {"name": name, "source": source.model_dump(exclude_none=True)}
    try:
        loaded = sources.load_model(cfg, root, ArtifactStore(root / ".trtflow" / "store"))
    except ModelError as exc:
        if source.factory and "model.inputs is required" in str(exc):
            module = sources._load_factory(source.factory, None)
            info.update(inputs=None, outputs=None, inputs_note=str(exc),
                        parameters=sum(p.numel() for p in module.parameters()),
                        ops=_module_ops(module))
            return info
        raise
    info["inputs"] = [s.model_dump(exclude_none=True) for s in loaded.inputs]
    info["outputs"] = loaded.outputs
    if loaded.onnx_path is not None:
        import onnx

        model = onnx.load(str(loaded.onnx_path))
        info["ops"] = dict(collections.Counter(n.op_type for n in model.graph.node)
                           .most_common())
        info["parameters"] = int(sum(_numel(i.dims) for i in model.graph.initializer))
    else:
        assert loaded.module is not None
        info["parameters"] = int(sum(p.numel() for p in loaded.module.parameters()))
        info["ops"] = _module_ops(loaded.module)
    return info


def _numel(dims: Any) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _module_ops(module: Any) -> dict[str, int]:
    """aten ops of a traced graph (ExportedProgram), else leaf module types."""
    graph = getattr(module, "graph", None)
    if graph is not None and hasattr(graph, "nodes"):
        counts = collections.Counter(str(getattr(n.target, "__name__", n.target))
                                     for n in graph.nodes if n.op == "call_function")
    else:
        counts = collections.Counter(type(m).__name__ for m in module.modules()
                                     if not list(m.children()))
    return dict(counts.most_common())


def _model_name(arg: str) -> str:
    base = arg.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    base = re.sub(r"\.(onnx|pt2)$", "", base).split("@")[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "-", base).strip("-") or "model"


def params_skeleton(info: dict[str, Any]) -> str:
    """A commented params file for the source; validated before it is returned."""
    model: dict[str, Any] = {"name": info["name"], "source": info["source"]}
    if info.get("inputs") is None:
        model["inputs"] = [{"name": "input", "dtype": "float32",
                            "shape": ["batch", 3, 224, 224]}]
    doc = {
        "model": model,
        "data": {"calibration": {"npz": f"data/{info['name']}/calibration.npz"},
                 "evaluation": {"npz": f"data/{info['name']}/evaluation.npz",
                                "labels": "label"}},
        "targets": {"fp32": {"backend": "onnxruntime", "device": "cpu", "precision": "fp32"},
                    "int8": {"backend": "onnxruntime", "device": "cpu", "precision": "int8"}},
        "calibration": {"method": "entropy"},
        "validate": {"batch_sizes": [1, 32], "gates": {"max_accuracy_drop": 0.01}},
    }
    parse_params(doc, "skeleton")
    head = (f"# trtflow params for {info['name']} (written by `trtflow init`; edit, then\n"
            f"# `trtflow run` this file). Data: .npz files whose keys are the input names\n"
            f"# {[i['name'] for i in info.get('inputs') or model['inputs']]}; 'labels' is "
            "optional.\n")
    if info.get("inputs") is None:
        head += "# model.inputs could not be read from the source: fill in names/shapes.\n"
    return head + yaml.safe_dump(doc, sort_keys=False)
