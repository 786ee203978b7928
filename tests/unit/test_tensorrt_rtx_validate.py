"""validate on an engine this host cannot run (a TensorRT-RTX plan without its GPU): the
quality comes from its stand-in, labelled, and no latency is measured or reported."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from trtflow.backends.onnxruntime_backend import OrtEngine
from trtflow.params import Gates, ValidateConfig
from trtflow.stages.validate import validate
from trtflow.stages.validation_report import ValidationReport

from .tiny import conv_bn_graph


@dataclass
class _Batch:
    inputs: dict[str, np.ndarray]
    labels: None = None


class _StandIn:
    """What tensorrt_rtx.HandedGraphEngine declares: what ran, and why no latency."""

    ran = "ONNX Runtime (CPU) on the graph handed to TensorRT-RTX (handed.onnx)"
    latency_note = "not measured: no supported GPU on this host"

    def __init__(self, engine: OrtEngine) -> None:
        self.engine = engine
        self.input_names, self.output_names = engine.input_names, engine.output_names
        self.calls = 0

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        return self.engine.run(inputs)


def test_engine_that_cannot_run_here_gets_no_latency_and_is_labelled(tmp_path: Path) -> None:
    onnx.save(conv_bn_graph(), tmp_path / "m.onnx")
    ort_engine = OrtEngine.from_model(tmp_path / "m.onnx", 1)
    stand_in = _StandIn(ort_engine)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8), np.float32)
    cfg = ValidateConfig(batch_sizes=[1, 4], warmup=1, iterations=5,
                         gates=Gates(min_speedup=1.0))
    report = validate(stand_in, ort_engine.run, "self", [_Batch({"x": x})],
                      lambda bs: {"x": x[:bs]}, cfg, "cosine", "fp16", tmp_path)
    assert stand_in.calls == 1  # the quality pass only: nothing timed
    assert report.latency.engine == [] and report.latency.baseline == []
    assert report.speedup_p50 == {}
    assert report.engine_ran == _StandIn.ran and report.latency_note == _StandIn.latency_note
    speedup = next(d for d in report.gates.decisions if d.gate == "min_speedup")
    assert speedup.measured is None and not speedup.passed  # no speed-up claimed
    assert ValidationReport.read(tmp_path) == report
    assert (tmp_path / "latency.png").is_file()
