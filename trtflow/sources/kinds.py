"""The model source kinds: how each `model.source` kind is identified, loaded and checked.

Each kind is an object registered by its field in `trtflow.params.ModelSource` (the
field names the object that handles it), so adding a kind is one module with such an
object plus that one field. What a kind does not know (its inputs without loading, real
sample inputs, its class count) it leaves to the defaults of `SourceKindBase`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from trtflow.errors import ModelError
from trtflow.params import ModelConfig, TensorSpec, project_path
from trtflow.store import ArtifactStore, file_digest

if TYPE_CHECKING:
    import numpy as np

    from trtflow.context import Context
    from trtflow.sources import LoadedModel

BUILTIN_VERSION = "builtin-1"


def hashed(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def file_part(value: str, root: Path, field: str) -> str:
    """The digest of a source file named by params `field` (a clear error if missing)."""
    path = project_path(value, root, field)
    if not path.is_file():
        raise ModelError(f"{field}: file {path} does not exist")
    return file_digest(path)


class SourceKindBase:
    """Defaults of a source kind: inputs and class count known only after loading."""

    # check synthetic input sizes against the memory budget before anything runs
    synthetic_check = True
    # its inputs are declared by params (model.inputs) only, never read from the source
    inputs_from_params = False
    # "module:STEPS" of the kind's own stage plan (trtflow.plan.steps_for); None: the five
    # stages of trtflow/plan.py
    plan: str | None = None

    def known_inputs(self, cfg: ModelConfig) -> list[TensorSpec] | None:
        """Input specs known without loading the model, else None."""
        return None

    def sample_inputs(self, cfg: ModelConfig, batch: int) -> dict[str, np.ndarray] | None:
        """Real sample inputs, where the kind has them (else synthetic ones are used)."""
        return None

    def check(self, ctx: Context) -> int | None:
        """Preflight checks of the source's files; the class count where known without
        torch."""
        return None


class Builtin(SourceKindBase):
    synthetic_check = False

    def digest(self, cfg: ModelConfig, root: Path) -> str:
        from trtflow.sources.builtin import DIGITS_TRAIN_VERSION

        return f"{BUILTIN_VERSION}:{cfg.source.builtin}:{DIGITS_TRAIN_VERSION}"

    def load(self, cfg: ModelConfig, root: Path, store: ArtifactStore) -> LoadedModel:
        from trtflow.sources import LoadedModel
        from trtflow.sources.builtin import BUILTIN_INPUTS, BUILTIN_OUTPUTS, builtin_module

        name = str(cfg.source.builtin)
        return LoadedModel(builtin_module(name, store), None, BUILTIN_INPUTS[name],
                           BUILTIN_OUTPUTS[name])

    def known_inputs(self, cfg: ModelConfig) -> list[TensorSpec] | None:
        from trtflow.sources.builtin import BUILTIN_INPUTS

        return BUILTIN_INPUTS[str(cfg.source.builtin)]

    def sample_inputs(self, cfg: ModelConfig, batch: int) -> dict[str, np.ndarray] | None:
        from trtflow.sources.builtin import sample_inputs

        return sample_inputs(str(cfg.source.builtin), batch)

    def check(self, ctx: Context) -> int | None:
        from trtflow.sources.builtin import BUILTIN_CLASSES

        return BUILTIN_CLASSES.get(str(ctx.params.model.source.builtin))


class OnnxFile(SourceKindBase):
    def digest(self, cfg: ModelConfig, root: Path) -> str:
        from trtflow.sources import external_files, missing_external

        value = str(cfg.source.onnx)
        parts = ["onnx", file_part(value, root, "model.source.onnx")]
        path = project_path(value, root, "model.source.onnx")
        for data_file in sorted(external_files(path)):
            if not data_file.is_file():
                raise ModelError(missing_external(path, data_file))
            parts.append(file_digest(data_file))
        return hashed(parts)

    def load(self, cfg: ModelConfig, root: Path, store: ArtifactStore) -> LoadedModel:
        from trtflow.sources import LoadedModel, check_onnx_file, onnx_inputs

        path = project_path(str(cfg.source.onnx), root, "model.source.onnx")
        model = check_onnx_file(path)
        return LoadedModel(None, path, cfg.inputs or onnx_inputs(model),
                           [o.name for o in model.graph.output])

    def check(self, ctx: Context) -> int | None:
        from trtflow.preflight import output_classes
        from trtflow.sources import check_onnx_file

        model = ctx.model()
        assert model.onnx_path is not None
        classes = output_classes(check_onnx_file(model.onnx_path))
        specs = ctx.input_specs()
        if any(isinstance(d, str) for s in specs for d in s.shape[1:]):
            from trtflow.graph.parity import ort_run
            from trtflow.sources import synthetic_shapes

            synthetic_shapes(specs, max(ctx.params.export.samples, ctx.params.data.batch_size))

            # dynamic dims past the batch are filled with a guess: try it once, now
            ort_run(model.onnx_path, ctx.sample_inputs(ctx.params.export.samples))
        return classes


class ExportedProgram(SourceKindBase):
    def digest(self, cfg: ModelConfig, root: Path) -> str:
        field = "model.source.exported_program"
        return hashed(["exported_program",
                       file_part(str(cfg.source.exported_program), root, field)])

    def load(self, cfg: ModelConfig, root: Path, store: ArtifactStore) -> LoadedModel:
        from trtflow.sources import load_exported_program

        return load_exported_program(project_path(
            str(cfg.source.exported_program), root, "model.source.exported_program"), cfg)


class Factory(SourceKindBase):
    inputs_from_params = True
    def digest(self, cfg: ModelConfig, root: Path) -> str:
        src = cfg.source
        weights = ([file_part(src.weights_file, root, "model.source.weights")]
                   if src.weights_file else [])
        return hashed(["factory", *weights, str(src.factory)])

    def load(self, cfg: ModelConfig, root: Path, store: ArtifactStore) -> LoadedModel:
        from trtflow.sources import LoadedModel, load_factory

        src = cfg.source
        weights = (project_path(src.weights_file, root, "model.source.weights")
                   if src.weights_file else None)
        module = load_factory(str(src.factory), weights)
        if not cfg.inputs:
            raise ModelError("model.inputs is required for a 'factory' source: a Python "
                             "function does not say its input names, dtypes or shapes")
        return LoadedModel(module, None, cfg.inputs, cfg.outputs or ["output"])

    def known_inputs(self, cfg: ModelConfig) -> list[TensorSpec] | None:
        return cfg.inputs

    def check(self, ctx: Context) -> int | None:
        weights = ctx.params.model.source.weights_file
        if weights and weights.endswith(".safetensors"):
            from trtflow.sources.weights_file import check_safetensors

            check_safetensors(project_path(weights, ctx.root, "model.source.weights"))
        return None


class MlflowModel(SourceKindBase):
    def digest(self, cfg: ModelConfig, root: Path) -> str:
        from trtflow.sources import mlflow_model

        src = cfg.source
        return hashed(["mlflow", *mlflow_model.resolve(str(src.mlflow)), str(src.allow_pickle)])

    def load(self, cfg: ModelConfig, root: Path, store: ArtifactStore) -> LoadedModel:
        from trtflow.sources import load_mlflow

        return load_mlflow(str(cfg.source.mlflow), cfg.source.allow_pickle, cfg, store)


BUILTIN = Builtin()
ONNX = OnnxFile()
EXPORTED_PROGRAM = ExportedProgram()
FACTORY = Factory()
MLFLOW = MlflowModel()
