"""Latency within a time budget: calls counted on a given clock (no timing is asserted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from trtflow.backends.onnxruntime_backend import OrtEngine
from trtflow.latency import MIN_CALLS, measure_side_by_side
from trtflow.params import ValidateConfig
from trtflow.stages.validate import RecordedReference, validate

from .tiny import conv_bn_graph


class _Host:
    """A clock that only moves when a contender runs: each call costs its set seconds."""

    def __init__(self) -> None:
        self.now = 0.0
        self.log: list[str] = []

    def clock(self) -> float:
        return self.now

    def contender(self, name: str, seconds: float):
        def call() -> None:
            self.log.append(name)
            self.now += seconds
        return call


def test_a_slow_baseline_gets_fewer_calls_within_the_budget() -> None:
    host = _Host()
    eng, base = measure_side_by_side(
        [host.contender("engine", 0.01), host.contender("eager", 0.5)], 8, warmup=10,
        iterations=100, seconds=20.0, clock=host.clock)
    # warm-up: at most a fifth of each 10 s share (eager: 2 calls, not 10)
    assert host.log[:10] == ["engine"] * 10 and host.log[10:12] == ["eager"] * 2
    assert eng.iterations == 100  # the cap
    assert MIN_CALLS <= base.iterations <= 20  # (10 s - warm-up) / 0.5 s
    assert host.now <= 20.0 + 0.5


def test_blocks_alternate_so_drift_hits_both() -> None:
    host = _Host()
    measure_side_by_side([host.contender("a", 0.1), host.contender("b", 0.1)], 1, warmup=1,
                         iterations=6, seconds=100.0, clock=host.clock)
    timed = host.log[2:]  # after one warm-up call each
    assert timed == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]


def test_a_call_longer_than_the_budget_still_gets_min_calls() -> None:
    host = _Host()
    (stats,) = measure_side_by_side([host.contender("huge", 30.0)], 32, warmup=10,
                                    iterations=100, seconds=10.0, clock=host.clock)
    assert stats.iterations == MIN_CALLS and host.log.count("huge") == MIN_CALLS + 1


def test_recorded_reference_runs_the_reference_once_per_batch() -> None:
    runs: list[int] = []

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        runs.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}

    recorded = RecordedReference(reference)
    batches = [{"x": np.ones(4)}, {"x": np.ones(2)}]
    first = [recorded(b) for b in batches]
    recorded.replay()
    again = [recorded(b) for b in batches]
    assert runs == [4, 2] and all(a is b for a, b in zip(first, again, strict=True))
    assert recorded({"x": np.ones(3)})["y"].shape == (3,) and runs == [4, 2, 3]  # past the end


class _B:
    def __init__(self, x: np.ndarray) -> None:
        self.inputs, self.labels = {"x": x}, None


def test_validate_reports_its_budget_noise_and_progress(tmp_path: Path) -> None:
    onnx.save(conv_bn_graph(), tmp_path / "m.onnx")
    eng = OrtEngine.from_model(tmp_path / "m.onnx", 1)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8), np.float32)
    lines: list[str] = []
    cfg = ValidateConfig(batch_sizes=[1, 4], warmup=1, iterations=8, budget_s=2.0)
    report = validate(eng, eng.run, "self", [_B(x), _B(x)], lambda bs: {"x": x[:1].repeat(bs, 0)},
                      cfg, "cosine", "fp32", tmp_path, progress=lines.append)
    assert report.latency.budget_s == 2.0 and report.latency.seconds is not None
    assert set(report.speedup_noise_pct) == {1, 4}
    assert all(r.iterations <= 8 for r in report.latency.engine + report.latency.baseline)
    assert any(line.startswith("validate quality: 4/8 samples, ~") and line.endswith("left")
               for line in lines)
    assert any(line.startswith("validate latency 2/2: batch 4") and "left" in line
               for line in lines)
    assert any("speed-up" in line and "±" in line for line in lines)


def test_recorded_reference_keeps_no_more_than_its_limit() -> None:
    runs: list[int] = []

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        runs.append(len(inputs["x"]))
        return {"y": inputs["x"].astype(np.float64)}

    recorded = RecordedReference(reference, limit_bytes=8 * 6)  # room for the first batch
    batches = [{"x": np.ones(4)}, {"x": np.ones(4)}]
    for b in batches:
        recorded(b)
    recorded.replay()
    for b in batches:
        recorded(b)
    assert runs == [4, 4, 4]  # the first replayed, the second run again
