"""What every stage needs besides its inputs: the params, the project root, the store.

The model itself is loaded on first use only, so a run whose stages are all
cached never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trtflow.errors import ParamsError
from trtflow.params import DataSource, Params, Target, TensorSpec
from trtflow.store import ArtifactStore, tree_digest

if TYPE_CHECKING:
    import numpy as np

    from trtflow.sources import LoadedModel


@dataclass
class Context:
    params: Params
    root: Path
    store: ArtifactStore
    remeasure: bool = False
    progress: Callable[[str], None] | None = None
    _model: LoadedModel | None = field(default=None, repr=False)

    @classmethod
    def create(cls, params: Params, root: Path, store_dir: Path | None = None,
               remeasure: bool = False) -> Context:
        return cls(params, root, ArtifactStore(store_dir or root / ".trtflow" / "store"),
                   remeasure)

    def model(self) -> LoadedModel:
        if self._model is None:
            from trtflow import sources

            self._model = sources.load_model(self.params.model, self.root, self.store)
        return self._model

    def target(self, name: str) -> Target:
        try:
            return self.params.targets[name]
        except KeyError:
            raise ParamsError(f"target '{name}' is not defined in params.targets "
                              f"(defined: {sorted(self.params.targets)})") from None

    def sample_inputs(self, batch: int) -> dict[str, np.ndarray]:
        from trtflow import sources

        known = sources.source_kind(self.params.model.source).sample_inputs(self.params.model,
                                                                            batch)
        return known if known is not None else sources.synthetic_inputs(self.model().inputs,
                                                                         batch)

    def input_specs(self) -> list[TensorSpec]:
        from trtflow import sources

        known = sources.source_kind(self.params.model.source).known_inputs(self.params.model)
        return known if known is not None else self.model().inputs

    def metric(self) -> str:
        """The agreement metric validate reports and calibration's accuracy search uses:
        top1 with labelled evaluation data, else cosine (unless params name one)."""
        cfg = self.params.validate_
        if cfg.metric != "auto":
            return cfg.metric
        ev = self.params.data.evaluation
        return "top1" if ev is not None and ev.labels else "cosine"

    def source_digest(self) -> str:
        from trtflow import sources

        return sources.source_digest(self.params.model, self.root)


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
        from trtflow.datasets.stream import missing_data

        raise missing_data(p)
    return tree_digest(p)


def preflight(ctx: Context, targets: list[str] | None = None) -> None:
    """Check the model source and data files before any orchestration starts, so a bad
    input fails before any stage stores an artifact: files and their headers, the ONNX
    graph (opset/IR, cycles, NaN/Inf weights), synthetic-input sizes, data vs inputs
    and labels vs the model's classes where the class count is known without torch;
    `targets` (default: all in params) that need calibration vs a static batch."""
    from trtflow.datasets import open_data

    ctx.source_digest()
    from trtflow.sources import source_kind

    kind = source_kind(ctx.params.model.source)
    num_classes = kind.check(ctx)
    # a kind whose inputs only params declare is not loaded here (a factory runs code)
    specs = ctx.params.model.inputs if kind.inputs_from_params else ctx.input_specs()
    if specs and kind.synthetic_check:
        from trtflow.sources import synthetic_shapes

        synthetic_shapes(specs, max(ctx.params.export.samples, ctx.params.data.batch_size))
    if specs:
        from trtflow.preflight import check_static_batch, needs_calibration

        check_static_batch(specs, [name for name in (ctx.params.targets if targets is None
                                                     else targets)
                                   if needs_calibration(ctx.target(name))])
    data = ctx.params.data
    for ds, classes in ((data.calibration, None), (data.evaluation, num_classes)):
        if ds is not None and specs:
            stream = open_data(ds, specs, ctx.root, data.batch_size,
                               classes if ds.labels else None)
            if not ds.npz:  # npz is checked whole; other sources sample by sample: one batch
                next(iter(stream), None)

