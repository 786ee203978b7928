"""The calibration pass's samples per run, from the memory budget (given numbers)."""

from __future__ import annotations

import numpy as np
import pytest

from trtflow.errors import CalibrationError
from trtflow.quant.session_batch import output_bytes, samples_per_run

MB = 1 << 20


def test_runs_take_as_many_samples_as_half_the_budget_holds() -> None:
    assert samples_per_run(85 * MB, ceiling=8, budget=8 << 30) == 8
    assert samples_per_run(85 * MB, ceiling=8, budget=400 * MB) == 2
    assert samples_per_run(300 * MB, ceiling=8, budget=400 * MB) == 1


def test_one_sample_over_the_budget_is_refused_with_the_numbers() -> None:
    with pytest.raises(CalibrationError, match=r"500\.0 MiB.*400\.0 MiB.*TRTFLOW_MEMORY_BUDGET"):
        samples_per_run(500 * MB, ceiling=8, budget=400 * MB)


def test_the_budget_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRTFLOW_MEMORY_BUDGET", "100M")
    assert samples_per_run(10 * MB, ceiling=64) == 5
    assert output_bytes([np.zeros((2, 3), np.float32), np.zeros(4, np.float64)]) == 24 + 32


def test_a_calibration_pass_runs_fewer_samples_at_a_time_within_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from trtflow.quant.collect import collect_histograms
    from trtflow.quant.qdq import float_activations

    from .tiny import conv_bn_graph

    model = conv_bn_graph()  # one sample's activations: ~5.9 KB
    feeds = [{"x": np.random.default_rng(0).standard_normal((16, 3, 8, 8), np.float32)}]
    monkeypatch.setenv("TRTFLOW_MEMORY_BUDGET", "40K")  # 20 KB a run: 3 samples
    result = collect_histograms(model, float_activations(model), feeds, 1)
    assert result.samples == 16 and result.collector["x"].num_values == 16 * 3 * 8 * 8
    monkeypatch.setenv("TRTFLOW_MEMORY_BUDGET", "1K")
    with pytest.raises(CalibrationError, match="memory budget"):
        collect_histograms(model, float_activations(model), feeds, 1)
