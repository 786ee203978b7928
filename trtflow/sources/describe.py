"""`trtflow inspect` and `trtflow init`: look at a model source, start a params file."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

from trtflow.errors import ModelError, ParamsError
from trtflow.params import BUILTIN_MODELS, ModelConfig, ModelSource, TensorSpec, parse_params
from trtflow.yamlfile import dump_yaml


def source_from_arg(arg: str, weights: str | None = None) -> ModelSource:
    """Guess the source kind from how the argument looks (`weights`: for a factory)."""
    if arg in BUILTIN_MODELS:
        return ModelSource(builtin=arg)  # type: ignore[arg-type]
    if arg.startswith("models:/"):
        return ModelSource(mlflow=arg)
    if arg.endswith(".onnx"):
        return ModelSource(onnx=arg)
    if arg.endswith(".pt2"):
        return ModelSource(exported_program=arg)
    if re.fullmatch(r"[\w.]+:\w+", arg):
        return ModelSource(factory=arg, weights=weights or "none")
    raise ParamsError(f"cannot tell what kind of model source '{arg}' is: expected a .onnx "
                      f"or .pt2 path, 'package.module:function', models:/NAME/VERSION, or one "
                      f"of {', '.join(BUILTIN_MODELS)}")


INPUT_DTYPES = ("float32", "float16", "int64", "int32", "bool")


def parse_input_option(text: str) -> TensorSpec:
    """`--input NAME:SHAPE[:DTYPE]`, SHAPE comma-separated (a word is a dynamic dim):
    `image:batch,3,224,224`, `ids:batch,seq:int64`."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ParamsError(f"--input {text!r}: expected NAME:SHAPE[:DTYPE], e.g. "
                          "image:batch,3,224,224 or ids:batch,seq:int64")
    dtype = parts[2] if len(parts) == 3 else "float32"
    if dtype not in INPUT_DTYPES:
        raise ParamsError(f"--input {text!r}: dtype {dtype!r} is not one of "
                          f"{', '.join(INPUT_DTYPES)}")
    shape: list[int | str] = []
    for dim in parts[1].split(","):
        dim = dim.strip()
        if re.fullmatch(r"[1-9]\d*", dim):
            shape.append(int(dim))
        elif re.fullmatch(r"[A-Za-z_]\w*", dim):
            shape.append(dim)
        else:
            raise ParamsError(f"--input {text!r}: dim {dim!r} is neither a positive number "
                              "nor a name (a dynamic dim such as batch)")
    return TensorSpec(name=parts[0], dtype=dtype, shape=shape)  # type: ignore[arg-type]


def describe(arg: str, root: Path, weights: str | None = None,
             inputs: list[TensorSpec] | None = None) -> dict[str, Any]:
    """Inputs, outputs, op histogram and parameter count of a model source. `inputs`
    (`trtflow init --input`) declare a factory's inputs, which its code does not say."""
    from trtflow import sources
    from trtflow.store import ArtifactStore

    source = source_from_arg(arg, weights)
    if inputs and not source.factory:
        raise ParamsError(f"--input: a {next(iter(source.model_dump(exclude_none=True)))} "
                          "source says its own inputs; --input is for a factory source "
                          "(package.module:function)")
    name = model_name_for(arg, root)
    cfg = ModelConfig(name=name, source=source, inputs=inputs or None)
    info: dict[str, Any] = {"name": name, "source": source.model_dump(exclude_none=True)}
    try:
        loaded = sources.load_model(cfg, root, ArtifactStore(root / ".trtflow" / "store"))
    except ModelError as exc:
        if source.factory and "model.inputs is required" in str(exc):
            module = sources.load_factory(source.factory, None)
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


# Names that say nothing about the model: `init` looks further (parent folders, module).
GENERIC_NAMES = {"model", "models", "build", "out", "output", "outputs", "export", "exported",
                 "onnx", "checkpoint", "checkpoints", "weights", "artifacts", "dist", "tmp",
                 "net", "network", "main", "src", "examples", "example", "train", "training"}


def _name_part(text: str) -> str:
    text = re.sub(r"\.(onnx|pt2|pt|safetensors)$", "", text).split("@")[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")


def model_name_for(arg: str, root: Path | None = None) -> str:
    """A name that says which model this is: `examples/out/sensor.pt2` -> sensor,
    `runs/resnet50/model.onnx` -> resnet50, `examples.train_sensor:make_model` -> sensor,
    `models:/churn/3` -> churn. Generic file names (model, build, ...) are skipped; when
    every part is generic, the project directory names it (`~/churn/build/model.onnx`)."""
    if arg.startswith("models:/"):
        return _name_part(arg.removeprefix("models:/").split("/")[0]) or "model"
    if re.fullmatch(r"[\w.]+:\w+", arg):  # a factory: its function, then its module path
        module, _, function = arg.partition(":")
        candidates = [re.sub(r"^(make|build|create|get|new)_|_(model|net|factory)$", "",
                             function), *reversed(module.split("."))]
        candidates = [re.sub(r"^(train|model|models)_", "", c) for c in candidates]
    else:
        path = Path(arg) if root is None else (root / arg).resolve()
        candidates = list(reversed(path.parts))
    if root is not None:
        candidates.append(root.resolve().name)
    for candidate in map(_name_part, candidates):
        if candidate and candidate.lower() not in GENERIC_NAMES:
            return candidate
    return "model"


def check_name_free(name: str, source: dict[str, Any], params_dir: Path,
                    named: bool = False, replacing: Path | None = None) -> None:
    """Refuse a model name another params file in `params_dir` gives a different source
    (an ONNX file and a .pt2 of one model both default to its stem): the two would
    register into one MLflow model and replace each other's production version."""
    from trtflow.yamlfile import load_yaml

    for path in sorted(params_dir.glob("*.y*ml")) if params_dir.is_dir() else []:
        if replacing is not None and path.resolve() == replacing.resolve():
            continue
        try:
            model = load_yaml(path).get("model", {})
        except Exception:  # noqa: BLE001 - another file's problem; run reports it
            continue
        if isinstance(model, dict) and model.get("name") == name and \
                _same_source(model.get("source"), source) is False:
            other = ", ".join(f"{k}: {v}" for k, v in dict(model.get("source") or {}).items())
            kind = next(iter(source))
            hint = ("pass another --name" if named else
                    f"pass --name (e.g. --name {name}-{kind.replace('_', '-')})")
            raise ParamsError(f"model name '{name}' is already used by {path} for another "
                              f"source ({other}); two sources under one name register into "
                              f"one model and replace each other's versions: {hint}")


def _same_source(given: Any, source: dict[str, Any]) -> bool | None:
    """Whether a params file's `model.source` is `source` (None: it is not readable)."""
    try:
        return ModelSource.model_validate(given).model_dump(exclude_none=True) == source
    except ValueError:
        return None


def data_entry(path: str, root: Path, input_names: list[str], split: str) -> dict[str, Any]:
    """`{npz: path[, labels: key]}` for an existing .npz: its keys must include every input
    name; an integer array under another key is the labels."""
    import numpy as np

    full = Path(path) if Path(path).is_absolute() else root / path
    if not full.is_file():
        raise ParamsError(f"--{split} {path}: no such file (expected an .npz whose keys are "
                          f"the model's input names {input_names})")
    try:
        with np.load(full, allow_pickle=False) as npz:
            dtypes = {key: npz[key].dtype for key in npz.files}
    except (OSError, ValueError) as exc:
        raise ParamsError(f"--{split} {path}: not a readable .npz ({exc})") from None
    missing = [n for n in input_names if n not in dtypes]
    if missing:
        raise ParamsError(f"--{split} {path}: no array named {missing[0]!r} (the model's "
                          f"inputs are {input_names}; the file has {sorted(dtypes)})")
    entry: dict[str, Any] = {"npz": path}
    labels = [k for k, d in dtypes.items() if k not in input_names and d.kind in "iu"]
    if split == "evaluation" and labels:
        entry["labels"] = labels[0]
    return entry


def params_skeleton(info: dict[str, Any], root: Path | None = None,
                    calibration: str | None = None, evaluation: str | None = None,
                    weights: str | None = None) -> str:
    """A commented params file for the source; validated before it is returned.

    Data paths are the files given (checked, labels key found) or left out with a
    comment saying what to add, never invented paths that do not exist."""
    model: dict[str, Any] = {"name": info["name"], "source": dict(info["source"])}
    if model["source"].get("factory"):
        model["source"]["weights"] = weights or "none"
    if info.get("inputs") is None:
        model["inputs"] = [{"name": "input", "dtype": "float32",
                            "shape": ["batch", 3, 224, 224]}]
    elif model["source"].get("factory"):  # given with --input: the factory's code says none
        model["inputs"] = info["inputs"]
    names = [i["name"] for i in info.get("inputs") or model["inputs"]]
    data = {split: data_entry(path, root or Path("."), names, split)
            for split, path in (("calibration", calibration), ("evaluation", evaluation))
            if path}
    targets: dict[str, Any] = {
        "fp32": {"backend": "onnxruntime", "device": "cpu", "precision": "fp32"}}
    if calibration:  # int8 needs calibration data
        targets["int8"] = {"backend": "onnxruntime", "device": "cpu", "precision": "int8"}
    doc: dict[str, Any] = {"model": model, **({"data": data} if data else {}),
                           "targets": targets}
    if calibration:
        doc["calibration"] = {"method": "entropy"}
    doc["validate"] = {"batch_sizes": [1, 32], "gates": {"max_accuracy_drop": 0.01}}
    parse_params(doc, "skeleton")
    head = (f"# trtflow params for {info['name']} (written by `trtflow init`; edit, then\n"
            f"# `trtflow run` this file).\n")
    if not calibration or not evaluation:
        head += ("# Data: .npz files whose keys are the input names "
                 f"{names}, plus an integer labels array\n# for evaluation. Add them as\n"
                 "#   data: {calibration: {npz: cal.npz}, evaluation: {npz: eval.npz, "
                 "labels: label}}\n# (or pass --calibration/--evaluation to `trtflow init`); "
                 "an int8 target needs calibration data.\n")
    if model["source"].get("weights") == "none":
        head += ("# weights: none compiles the factory's untrained initial weights: set the "
                 "trained\n# .safetensors (or state-dict .pt) file instead (or --weights).\n")
    if info.get("inputs") is None:
        head += "# model.inputs could not be read from the source: fill in names/shapes.\n"
    return head + dump_yaml(doc)
