"""Streaming histogram collector: exact re-binning, constant memory, npz round trip."""

from __future__ import annotations

import numpy as np
import pytest

from trtflow.errors import CalibrationError
from trtflow.quant.histogram import DEFAULT_NUM_BINS, HistogramCollector, TensorHistogram
from trtflow.quant.methods import amax_max, amax_mse, amax_percentile


def growing_batches(seed: int = 0, count: int = 40, size: int = 2000) -> list[np.ndarray]:
    """Gaussian batches whose spread grows, so the range has to grow several times."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(size) * (0.2 + 0.1 * k)).astype(np.float32)
            for k in range(count)]


def test_first_batch_sets_range_to_its_max() -> None:
    values = np.array([[-3.0, 0.5], [0.0, 2.0]], dtype=np.float32)
    hist = TensorHistogram("t")
    hist.update(values)
    assert hist.amax_range == 3.0
    assert hist.amax == 3.0
    assert hist.num_values == 4
    assert hist.num_zeros == 1
    assert hist.counts.sum() == 4
    assert hist.counts[-1] == 1  # |-3| sits in the last bin, not past it


def test_bins_are_right_closed_with_zero_in_bin_0() -> None:
    hist = TensorHistogram.empty("t", num_bins=4, amax_range=4.0)
    hist.update(np.array([0.0, 1.0, 1.5, 2.0, 4.0]))
    np.testing.assert_array_equal(hist.counts, [2, 2, 0, 1])


def test_rebinning_preserves_total_count() -> None:
    hist = TensorHistogram("t")
    batches = growing_batches()
    for batch in batches:
        hist.update(batch)
        assert hist.counts.sum() == hist.num_values
    assert hist.num_values == sum(b.size for b in batches)
    global_max = max(float(np.abs(b).max()) for b in batches)
    assert hist.amax == global_max
    assert global_max <= hist.amax_range < 2 * global_max


def test_streamed_histogram_equals_one_pass_over_its_final_range() -> None:
    batches = growing_batches(seed=1)
    streamed = TensorHistogram("t")
    for batch in batches:
        streamed.update(batch)
    one_pass = TensorHistogram.empty("t", amax_range=streamed.amax_range)
    one_pass.update(np.concatenate(batches))
    # Power-of-two growth keeps old edges on the new grid: merging is exact.
    np.testing.assert_array_equal(streamed.counts, one_pass.counts)
    assert (streamed.amax, streamed.num_zeros) == (one_pass.amax, one_pass.num_zeros)


def test_streamed_amax_matches_global_range_histogram_within_one_bin() -> None:
    batches = growing_batches(seed=2)
    streamed = TensorHistogram("t")
    for batch in batches:
        streamed.update(batch)
    everything = np.concatenate(batches)
    global_hist = TensorHistogram.empty("t", amax_range=float(np.abs(everything).max()))
    global_hist.update(everything)
    tolerance = streamed.bin_width + global_hist.bin_width
    assert amax_max(streamed) == amax_max(global_hist)
    for percentile in (90.0, 99.0, 99.99):
        assert amax_percentile(streamed, percentile) == pytest.approx(
            amax_percentile(global_hist, percentile), abs=tolerance)
    assert amax_mse(streamed) == pytest.approx(amax_mse(global_hist), abs=tolerance)


def test_range_jump_beyond_num_bins_merges_everything_into_bin_0() -> None:
    hist = TensorHistogram.empty("t", num_bins=8)
    hist.update(np.array([0.5, 1.0]))
    hist.update(np.array([1000.0]))
    assert hist.amax_range == 1024.0
    np.testing.assert_array_equal(hist.counts, [2, 0, 0, 0, 0, 0, 0, 1])


def test_memory_is_constant_as_data_grows() -> None:
    collector = HistogramCollector()
    rng = np.random.default_rng(3)
    collector.update({"a": rng.standard_normal(1000)})
    nbytes = collector["a"].counts.nbytes
    for k in range(30):
        collector.update({"a": rng.standard_normal(5000) * (1 + k)})
    collector.update({"a": rng.standard_normal(3_000_000).astype(np.float32)})  # > one chunk
    assert collector["a"].counts.shape == (DEFAULT_NUM_BINS,)
    assert collector["a"].counts.nbytes == nbytes
    assert collector["a"].num_values == 1000 + 30 * 5000 + 3_000_000


def test_zeros_seen_before_any_range_stay_in_bin_0() -> None:
    hist = TensorHistogram("t")
    hist.update(np.zeros(10, dtype=np.float32))
    assert hist.amax_range == 0.0 and hist.counts[0] == 10
    hist.update(np.array([2.0, -1.0]))
    assert hist.amax_range == 2.0
    assert hist.counts[0] == 10 and hist.num_zeros == 10 and hist.counts.sum() == 12


def test_non_finite_values_raise_naming_the_tensor() -> None:
    hist = TensorHistogram("/conv1/Conv_output_0")
    with pytest.raises(CalibrationError, match="/conv1/Conv_output_0"):
        hist.update(np.array([1.0, np.nan]))
    with pytest.raises(CalibrationError, match="/conv1/Conv_output_0"):
        hist.update(np.array([-np.inf]))


def test_npz_round_trip_keeps_awkward_names(tmp_path) -> None:
    names = ["/layer1/conv.0/Conv_output_0", "input_1:0", "a.b.c", "x/y:0.z", "ünïcode"]
    collector = HistogramCollector()
    rng = np.random.default_rng(4)
    for k in range(5):
        collector.update({name: rng.standard_normal(500) * (i + 1) * (k + 1)
                          for i, name in enumerate(names)})
    collector.update({"zeros_only": np.zeros(7)})
    path = collector.save_npz(tmp_path / "histograms.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["histograms.npz"]

    loaded = HistogramCollector.load_npz(path)
    assert list(loaded) == names + ["zeros_only"]
    for name in loaded:
        original, restored = collector[name], loaded[name]
        np.testing.assert_array_equal(restored.counts, original.counts)
        assert restored.counts.dtype == np.int64
        assert (restored.amax_range, restored.amax, restored.num_values, restored.num_zeros) == (
            original.amax_range, original.amax, original.num_values, original.num_zeros)
    loaded.update({"input_1:0": np.array([1e6])})  # a loaded histogram keeps streaming
    assert loaded["input_1:0"].counts.sum() == loaded["input_1:0"].num_values


def test_load_npz_rejects_a_malformed_file(tmp_path) -> None:
    bad = tmp_path / "histograms.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(CalibrationError, match="histograms.npz"):
        HistogramCollector.load_npz(bad)
    np.savez(bad, names=np.array(["a"]))
    with pytest.raises(CalibrationError, match="missing"):
        HistogramCollector.load_npz(bad)


def test_integer_and_bool_values_are_accepted() -> None:
    hist = TensorHistogram("t")
    hist.update(np.array([-128, 0, 127], dtype=np.int8))
    hist.update(np.array([True, False]))
    assert (hist.amax, hist.num_values, hist.num_zeros) == (128.0, 5, 2)


def test_inconsistent_histogram_is_rejected() -> None:
    with pytest.raises(CalibrationError, match="'t'.*num_values"):
        TensorHistogram("t", counts=np.ones(16, dtype=np.int64), amax_range=1.0, amax=1.0,
                        num_values=3)
