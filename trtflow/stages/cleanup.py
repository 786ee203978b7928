"""cleanup: graph passes in order (constant folding, dead code, Conv+BatchNorm and other
fusions the target compiler would do), a report of node counts by op before and after
each pass, and a parity check of the cleaned graph against the exported one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtflow.params import CleanupConfig

if TYPE_CHECKING:
    from trtflow.context import Context
    from trtflow.stage import StageResult

VERSION = "cleanup-2"
CLEAN_FILE = "model.clean.onnx"
CLEANUP_REPORT = "cleanup_report.json"


def cleanup_model(raw_path: Path, cfg: CleanupConfig, sample: dict[str, np.ndarray],
                  out_dir: Path) -> dict[str, Any]:
    """Write `out_dir/model.clean.onnx` and its report; a ParityError if it computes
    something else than the exported graph on `sample`."""
    import onnx

    from trtflow.graph import cleanup as passes_mod
    from trtflow.graph.parity import compare, ort_run
    from trtflow.preflight import check_rows

    exported = ort_run(raw_path, sample)
    rows = len(next(iter(sample.values())))
    if rows > 1:  # an output that loses the batch fails here, before calibrate and build
        check_rows(exported, rows, "the exported graph's")
    passes = tuple(passes_mod.PASSES[name] for name in cfg.passes)
    cleaned, report = passes_mod.cleanup(onnx.load(str(raw_path)), passes)
    onnx.save_model(cleaned, str(out_dir / CLEAN_FILE))
    parity = compare(exported, ort_run(out_dir / CLEAN_FILE, sample),
                     cfg.atol, cfg.rtol, "cleanup parity (cleaned vs exported graph)")
    report["parity"] = parity.as_dict()
    (out_dir / CLEANUP_REPORT).write_text(json.dumps(report, indent=2))
    return report


def run(ctx: Context, target: str | None, out: Path, exported: StageResult) -> dict[str, Any]:
    """The plan's cleanup step: the exported graph, the params' passes, export's samples."""
    from trtflow.stages.export import MODEL_FILE

    return cleanup_model(exported.file(MODEL_FILE), ctx.params.cleanup,
                         ctx.sample_inputs(ctx.params.export.samples), out)
