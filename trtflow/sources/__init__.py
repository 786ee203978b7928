"""Model sources: resolve `model.source` to a torch module or an ONNX file, safely.

Pickle is never used here: state dicts load with `weights_only=True`, ONNX and
safetensors carry no code.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import onnx

from trtflow.errors import ModelError
from trtflow.graph.feeds import ONNX_DTYPES
from trtflow.params import ModelConfig, ModelSource, TensorSpec, source_kinds
from trtflow.sources.kinds import BUILTIN_VERSION as BUILTIN_VERSION
from trtflow.sources.synthetic import gather_ranges
from trtflow.sources.synthetic import synthetic_inputs as synthetic_inputs
from trtflow.sources.synthetic import synthetic_shapes as synthetic_shapes
from trtflow.store import ArtifactStore

if TYPE_CHECKING:  # torch is imported where a torch model is loaded, not by a cached run
    import torch

    from trtflow.context import Context


@dataclass
class LoadedModel:
    """A model ready for export (`module`) or already ONNX (`onnx_path`)."""

    module: torch.nn.Module | None
    onnx_path: Path | None
    inputs: list[TensorSpec]
    outputs: list[str]


class SourceKind(Protocol):
    """How one `model.source` kind is identified, loaded and checked (sources/kinds.py)."""

    synthetic_check: bool
    inputs_from_params: bool

    def digest(self, cfg: ModelConfig, root: Path) -> str: ...

    def load(self, cfg: ModelConfig, root: Path, store: ArtifactStore) -> LoadedModel: ...

    def known_inputs(self, cfg: ModelConfig) -> list[TensorSpec] | None: ...

    def sample_inputs(self, cfg: ModelConfig, batch: int) -> dict[str, Any] | None: ...

    def check(self, ctx: Context) -> int | None: ...


def source_kind(src: ModelSource) -> SourceKind:
    """The object registered for `src`'s kind (its field in params.ModelSource names it)."""
    module, _, attr = source_kinds()[src.kind].partition(":")
    kind: SourceKind = getattr(importlib.import_module(module), attr)
    return kind


def source_digest(cfg: ModelConfig, root: Path) -> str:
    """Identity of the model source, computed without loading it."""
    return source_kind(cfg.source).digest(cfg, root)


def missing_external(path: Path, data_file: Path) -> str:
    return (f"ONNX file {path} keeps its weights in {data_file.name}, which is missing "
            f"(expected next to the model, at {data_file})")


def external_files(onnx_path: Path) -> set[Path]:
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"ONNX file {onnx_path} is corrupt or truncated: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    files = set()
    for init in model.graph.initializer:
        info = {e.key: e.value for e in init.external_data}
        if "location" not in info:
            continue
        location = Path(info["location"])
        if location.is_absolute() or ".." in location.parts:
            raise ModelError(f"ONNX file {onnx_path}: initializer '{init.name}' keeps its data "
                             f"at {info['location']!r}, outside the model's folder; expected "
                             "a file next to the model")
        data_file = onnx_path.parent / location
        if data_file.is_symlink():  # onnx.load refuses it, saying only that loading failed
            raise ModelError(f"ONNX file {onnx_path}: initializer '{init.name}' keeps its data "
                             f"in {location}, which is a symlink to "
                             f"{os.readlink(data_file)}; ONNX refuses external data through "
                             "links (they may point anywhere): copy the file next to the "
                             "model instead of linking it")
        files.add(data_file)
        if data_file.is_file():
            _check_external_range(onnx_path, init.name, info, data_file)
    return files


def _check_external_range(onnx_path: Path, name: str, info: dict[str, str],
                          data_file: Path) -> None:
    """An initializer's declared offset/length must lie inside its data file."""
    try:
        offset, length = int(info.get("offset", "0")), int(info.get("length", "-1"))
    except ValueError:
        raise ModelError(f"ONNX file {onnx_path}: initializer '{name}' has a non-numeric "
                         "external-data offset or length") from None
    size = data_file.stat().st_size
    end = size if length < 0 else offset + length
    if offset < 0 or end > size:
        raise ModelError(f"ONNX file {onnx_path}: initializer '{name}' claims bytes "
                         f"{offset}..{end} of {data_file.name}, which holds {size} bytes "
                         "(truncated or mismatched external data)")


def load_model(cfg: ModelConfig, root: Path, store: ArtifactStore) -> LoadedModel:
    return source_kind(cfg.source).load(cfg, root, store)


def check_onnx_file(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file (and its external data); clear error when broken."""
    if not path.is_file():
        raise ModelError(f"ONNX file {path} does not exist")
    for data_file in external_files(path):
        if not data_file.is_file():
            raise ModelError(missing_external(path, data_file))
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, OSError...
        raise ModelError(f"ONNX file {path} is corrupt or truncated: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    from trtflow.preflight import check_acyclic, check_initializers, check_versions

    check_versions(model, path)  # before the checker, whose message would be C++'s
    check_acyclic(model, path)
    _check_inputs_have_rank(model, path)
    try:
        onnx.checker.check_model(model, full_check=False)
    except Exception as exc:  # ValidationError
        raise ModelError(f"ONNX file {path} is not a valid ONNX model: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    _check_ops_supported(model, path)
    check_initializers(model, path)
    return model


# Op domains ONNX Runtime's CPU provider implements besides the standard ones.
_RUNTIME_DOMAINS = ("com.microsoft", "com.microsoft.nchwc", "ai.onnx.ml")


def _check_inputs_have_rank(model: onnx.ModelProto, path: Path) -> None:
    """Every graph input needs a known rank: trtflow makes sample and calibration
    batches from it (its dims may be symbolic)."""
    inits = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name not in inits and not value.type.tensor_type.HasField("shape"):
            raise ModelError(f"ONNX file {path}: input '{value.name}' has no shape (unknown "
                             "rank); trtflow needs each input's rank, with named dims where "
                             "they are dynamic: re-export with input shapes (e.g. [batch, 3, "
                             "224, 224])")


def _check_ops_supported(model: onnx.ModelProto, path: Path) -> None:
    """Refuse ops no backend runs (custom domains) before any stage starts."""
    local = {(f.domain, f.name) for f in model.functions}
    for node in model.graph.node:
        domain = node.domain or ""
        if (domain, node.op_type) in local or domain in _RUNTIME_DOMAINS:
            continue
        if domain in ("", "ai.onnx") and onnx.defs.has(node.op_type, domain):
            continue
        raise ModelError(f"ONNX file {path}: node '{node.name or node.output[0]}' uses op "
                         f"{domain + ':' if domain else ''}{node.op_type}, which ONNX Runtime "
                         "does not implement (supported: the standard ONNX ops and "
                         f"{', '.join(_RUNTIME_DOMAINS)}); export the model without custom ops")


def onnx_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """Input specs read from a graph: names, dtypes, shapes with named dynamic dims."""
    inits = {i.name for i in model.graph.initializer}
    ranges = gather_ranges(model)
    specs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        ttype = value.type.tensor_type
        dtype = ONNX_DTYPES.get(ttype.elem_type)
        if dtype is None:
            raise ModelError(f"ONNX input '{value.name}' has element type {ttype.elem_type}, "
                             f"supported: {sorted(ONNX_DTYPES.values())}")
        shape: list[int | str] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or f"dim{i}")
            for i, d in enumerate(ttype.shape.dim)
        ]
        specs.append(TensorSpec(name=value.name, dtype=dtype, shape=shape,  # type: ignore[arg-type]
                                range=ranges.get(value.name) if dtype.startswith("int") else None))
    return specs


def load_mlflow(uri: str, allow_pickle: bool, cfg: ModelConfig, store: ArtifactStore
                 ) -> LoadedModel:
    from trtflow.sources import mlflow_model

    model_dir = mlflow_model.download(uri, store)
    pt2, _ = mlflow_model.pytorch_flavor(model_dir)
    if pt2 is not None:
        return load_exported_program(pt2, cfg)
    if not allow_pickle:
        raise ModelError(f"model.source.mlflow '{uri}' was saved with pickle, which runs code "
                         "when loaded; refused. Re-log it with serialization_format='pt2', or "
                         "set model.source.allow_pickle: true if you trust it")
    if not cfg.inputs:
        raise ModelError(f"model.inputs is required for the pickled MLflow model '{uri}'")
    module = mlflow_model.load_pickled(model_dir, uri)
    return LoadedModel(module.eval(), None, cfg.inputs, cfg.outputs or ["output"])


def _torch_dtypes() -> dict[Any, str]:
    import torch

    return {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64",
            torch.int32: "int32", torch.bool: "bool"}


def load_exported_program(path: Path, cfg: ModelConfig) -> LoadedModel:
    """A `torch.export.save` archive: inputs (names, dtypes, symbolic dims) from its graph."""
    if not path.is_file():
        raise ModelError(f"model.source.exported_program: file {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch would log its own traceback before raising
        raise ModelError(f"model.source.exported_program: {path} is not a torch.export "
                         "archive (expected a .pt2 zip written by torch.export.save)")
    import torch

    torch_dtypes = _torch_dtypes()
    try:
        with _weights_only_loads():
            program = torch.export.load(str(path))
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (it pickles {found.group(1)})" if found else ""
        raise ModelError(f"model.source.exported_program: {path} holds a pickled Python "
                         f"object{what}, which would run code when loaded; pickle is refused: "
                         "re-save it with torch.export.save from plain tensors") from None
    except Exception as exc:
        raise ModelError(f"model.source.exported_program: {path} is not a loadable "
                         f"torch.export archive: {str(exc).splitlines()[0][:300]}") from None
    specs = []
    nodes = {n.name: n for n in program.graph.nodes}
    id_ranges = _embedding_ranges(program)
    for spec in program.graph_signature.input_specs:
        if spec.kind.name != "USER_INPUT":
            continue
        val = nodes[spec.arg.name].meta.get("val")
        if val is None or val.dtype not in torch_dtypes:
            raise ModelError(f"{path}: input '{spec.arg.name}' is not a supported tensor")
        shape: list[int | str] = [
            d if isinstance(d, int) else ("batch" if i == 0 else f"{spec.arg.name}_dim{i}")
            for i, d in enumerate(val.shape)]
        dtype: Any = torch_dtypes[val.dtype]
        specs.append(TensorSpec(name=spec.arg.name, dtype=dtype, shape=shape,
                                range=id_ranges.get(spec.arg.name)))
    check_module(program.module(), f"model.source.exported_program {path}")
    outputs = cfg.outputs or [f"output_{i}" if len(program.graph_signature.user_outputs) > 1
                              else "output"
                              for i in range(len(program.graph_signature.user_outputs))]
    return LoadedModel(program.module(), None, cfg.inputs or specs, outputs)


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """torch.export.load retries a failed `weights_only` load of an archive's sample inputs
    with `weights_only=False`, i.e. unpickles whatever the file holds (checked with torch
    2.13: a crafted .pt2 ran a shell command). torch's own switch forces every load in
    this block to stay weights-only."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _embedding_ranges(program: Any) -> dict[str, tuple[float, float]]:
    """{user input: (0, rows - 1)} for inputs that index an embedding table directly."""
    import torch

    ranges: dict[str, tuple[float, float]] = {}
    for node in program.graph.nodes:
        if node.target is not torch.ops.aten.embedding.default or len(node.args) < 2:
            continue
        table, ids = node.args[0], node.args[1]
        val = getattr(table, "meta", {}).get("val")
        if getattr(ids, "op", None) == "placeholder" and val is not None and val.shape[0] > 0:
            rows = int(val.shape[0])
            old = ranges.get(ids.name, (0.0, float(rows - 1)))
            ranges[ids.name] = (0.0, min(old[1], float(rows - 1)))
    return ranges


def load_factory(factory: str, weights: Path | None) -> torch.nn.Module:
    import torch

    module_name, _, func_name = factory.partition(":")
    if not module_name or not func_name:
        raise ModelError(f"model.source.factory '{factory}' must look like "
                         "'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"model.source.factory '{factory}' is not importable: {exc}") from None
    try:
        model = fn()
    except Exception as exc:  # the user's own code failed: say where, not a traceback
        raise ModelError(f"model.source.factory '{factory}' raised {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300] if str(exc) else ''}") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"model.source.factory '{factory}' returned "
                         f"{type(model).__name__}, expected a torch.nn.Module")
    # before the weights: load_state_dict into a meta module copies nothing, silently
    check_materialized(model, f"model.source.factory '{factory}'")
    if weights is not None:
        state = load_state_dict(weights, factory)
        expected = set(model.state_dict())
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or extra:
            raise ModelError(f"model.source.weights: {weights} does not fit '{factory}': "
                             f"missing keys {missing}, unexpected keys {extra}")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # same keys, wrong shapes
            raise ModelError(f"model.source.weights: {weights} does not fit '{factory}': "
                             f"{' '.join(str(exc).split())[:500]}") from None
    check_module(model, f"model.source.factory '{factory}'"
                 + (f" with weights {weights}" if weights else ""))
    return model.eval()


def check_module(module: torch.nn.Module, where: str) -> None:
    """What would make a torch model's export or parity meaningless, named before anything
    is built: tensors without data (the `meta` device), NaN/Inf, negative BatchNorm
    variances (sqrt of a negative: NaN outputs that a parity check reports only as NaN)."""
    check_materialized(module, where)
    check_finite_parameters(module, where)
    check_batchnorm_variance(module, where)


def check_materialized(module: torch.nn.Module, where: str) -> None:
    on_meta = [name for name, t in [*module.named_parameters(), *module.named_buffers()]
               if t.device.type == "meta"]
    if on_meta:
        raise ModelError(f"{where} returned a module on the 'meta' device ({len(on_meta)} "
                         f"tensor(s) without data, e.g. '{on_meta[0]}'): its weights hold no "
                         "values to export; build the module on the CPU (outside "
                         "`torch.device('meta')`), or materialize it (`to_empty(device="
                         "'cpu')` then load its weights) before returning it")


def check_batchnorm_variance(module: torch.nn.Module, where: str) -> None:
    import torch

    for name, sub in module.named_modules():
        var = getattr(sub, "running_var", None)
        if isinstance(sub, torch.nn.modules.batchnorm._NormBase) and \
                isinstance(var, torch.Tensor) and bool((var < 0).any()):
            channel = int(torch.argmin(var))
            raise ModelError(f"{where}: BatchNorm '{name or type(sub).__name__}' has a "
                             f"negative running variance ({float(var[channel]):g} at channel "
                             f"{channel}; {int((var < 0).sum())} of {var.numel()} channels "
                             "negative): a variance is never negative, so the weights are "
                             "damaged or mis-loaded, and every output through it is NaN")


def check_finite_parameters(module: torch.nn.Module, where: str) -> None:
    """NaN/Inf in a torch model's parameters or buffers, named, before anything is built."""
    from trtflow.sources.weights_file import nonfinite_tensors

    bad = nonfinite_tensors(dict(module.state_dict()))
    if bad:
        raise ModelError(f"{where}: {len(bad)} tensor(s) hold NaN or Inf: "
                         f"{', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}; a model with "
                         "non-finite weights cannot be calibrated or validated")


def load_state_dict(path: Path, factory: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"model.source.weights: file {path} does not exist")
    from trtflow.sources import weights_file

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        weights_file.check_safetensors(path)  # before the library allocates from it
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"model.source.weights: {path} cannot be read: "
                             f"{type(exc).__name__}: {exc}") from None
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = (f"it pickles the Python object {found.group(1)}, which would run code when "
                "loaded" if found else re.sub(r"\x1b\[[0-9;]*m", "", str(exc).splitlines()[0]))
        raise ModelError(f"model.source.weights: {path} is not a plain state dict of tensors "
                         f"and was refused without unpickling code ({what}); pickle is "
                         "refused: save model.state_dict() with torch.save, or use "
                         ".safetensors") from None
    if not isinstance(state, dict):
        raise ModelError(f"model.source.weights: {path} holds {type(state).__name__}, "
                         "expected a state dict")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ModelError(f"model.source.weights: {path}: entries {not_tensors[:5]} are not "
                         "tensors; expected a state dict of tensors (model.state_dict())")
    return state
