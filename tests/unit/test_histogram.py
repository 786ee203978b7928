"""Streaming histogram collector: exact re-binning, constant memory, npz round trip, the
re-gridding to num_bins bins over [0, amax] that the methods read, concurrent updates."""

from __future__ import annotations

import numpy as np
import pytest

from trtflow.errors import CalibrationError
from trtflow.quant.collector import HistogramCollector
from trtflow.quant.histogram import (
    DEFAULT_NUM_BINS,
    DEFAULT_OVERSAMPLING,
    TensorHistogram,
)
from trtflow.quant.methods import (
    amax_entropy,
    amax_max,
    amax_mse,
    amax_percentile,
    entropy_divergences,
)


def growing_batches(seed: int = 0, count: int = 40, size: int = 2000) -> list[np.ndarray]:
    """Gaussian batches whose spread grows, so the range has to grow several times."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(size) * (0.2 + 0.1 * k)).astype(np.float32)
            for k in range(count)]


def test_first_batch_sets_range_to_its_max() -> None:
    values = np.array([[-3.0, 0.5], [0.0, 2.0]], dtype=np.float32)
    hist = TensorHistogram.empty("t")
    hist.update(values)
    assert hist.amax_range == 3.0
    assert hist.amax == 3.0
    assert hist.num_values == 4
    assert hist.num_zeros == 1
    assert hist.counts.sum() == 4
    assert hist.counts[-1] == 1  # |-3| sits in the last bin, not past it
    assert hist.fine_counts[-1] == 1


@pytest.mark.parametrize("oversampling", [1, 8])
def test_bins_are_right_closed_with_zero_in_bin_0(oversampling: int) -> None:
    hist = TensorHistogram.empty("t", num_bins=4, amax_range=4.0, oversampling=oversampling)
    hist.update(np.array([0.0, 1.0, 1.5, 2.0, 4.0]))
    np.testing.assert_array_equal(hist.counts, [2, 2, 0, 1])
    fine = np.zeros(4 * oversampling, dtype=np.int64)  # fine width 1/oversampling
    for value in (0.0, 1.0, 1.5, 2.0, 4.0):
        fine[max(0, int(np.ceil(value * oversampling)) - 1)] += 1
    np.testing.assert_array_equal(hist.fine_counts, fine)


def test_rebinning_preserves_total_count() -> None:
    hist = TensorHistogram.empty("t")
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
    streamed = TensorHistogram.empty("t")
    for batch in batches:
        streamed.update(batch)
    one_pass = TensorHistogram.empty("t", amax_range=streamed.amax_range)
    one_pass.update(np.concatenate(batches))
    # Power-of-two growth keeps old edges on the new grid: merging is exact.
    np.testing.assert_array_equal(streamed.fine_counts, one_pass.fine_counts)
    assert (streamed.amax, streamed.num_zeros) == (one_pass.amax, one_pass.num_zeros)


def test_streamed_amax_matches_global_range_histogram_within_one_bin() -> None:
    batches = growing_batches(seed=2)
    streamed = TensorHistogram.empty("t")
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


@pytest.mark.parametrize("oversampling", [1, 8])
def test_range_jump_beyond_num_bins_merges_everything_into_bin_0(oversampling: int) -> None:
    hist = TensorHistogram.empty("t", num_bins=8, oversampling=oversampling)
    hist.update(np.array([0.5, 1.0]))
    hist.update(np.array([1000.0]))  # growth factor 1024 > the 8 * oversampling fine bins
    assert hist.amax_range == 1024.0
    np.testing.assert_array_equal(hist.counts, [2, 0, 0, 0, 0, 0, 0, 1])
    assert hist.fine_counts[0] == 2


def test_memory_is_constant_as_data_grows() -> None:
    collector = HistogramCollector()
    rng = np.random.default_rng(3)
    collector.update({"a": rng.standard_normal(1000)})
    nbytes = collector["a"].fine_counts.nbytes
    for k in range(30):
        collector.update({"a": rng.standard_normal(5000) * (1 + k)})
    collector.update({"a": rng.standard_normal(3_000_000).astype(np.float32)})  # > one chunk
    assert collector["a"].counts.shape == (DEFAULT_NUM_BINS,)
    assert collector["a"].fine_counts.shape == (DEFAULT_NUM_BINS * DEFAULT_OVERSAMPLING,)
    assert collector["a"].fine_counts.nbytes == nbytes
    assert collector["a"].num_values == 1000 + 30 * 5000 + 3_000_000


def test_zeros_seen_before_any_range_stay_in_bin_0() -> None:
    hist = TensorHistogram.empty("t")
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


def test_a_rejected_batch_leaves_the_histogram_unchanged() -> None:
    hist = TensorHistogram.empty("t")
    hist.update(np.array([1.0, 0.0, -2.0]))
    before = (hist.fine_counts.copy(), hist.amax_range, hist.amax, hist.num_values,
              hist.num_zeros)
    batch = np.concatenate([np.full(300_000, 5.0), [np.nan]])  # NaN in a later chunk
    with pytest.raises(CalibrationError):
        hist.update(batch)
    np.testing.assert_array_equal(hist.fine_counts, before[0])
    assert (hist.amax_range, hist.amax, hist.num_values, hist.num_zeros) == before[1:]


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
        np.testing.assert_array_equal(restored.fine_counts, original.fine_counts)
        assert restored.fine_counts.dtype == np.int64
        assert (restored.amax_range, restored.amax, restored.num_values, restored.num_zeros,
                restored.oversampling) == (
            original.amax_range, original.amax, original.num_values, original.num_zeros,
            original.oversampling)
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


def test_load_npz_reads_format_1_as_plain_bins(tmp_path) -> None:
    path = tmp_path / "histograms.npz"
    np.savez(path, format_version=np.array([1]), names=np.array(["a"]),
             amax_range=np.array([4.0]), amax=np.array([3.5]), num_values=np.array([5]),
             num_zeros=np.array([1]), counts_0=np.array([2, 2, 0, 1]))
    hist = HistogramCollector.load_npz(path)["a"]
    assert (hist.num_bins, hist.oversampling) == (4, 1)
    np.testing.assert_array_equal(hist.counts, [2, 2, 0, 1])


def test_oversampling_must_divide_the_fine_counts() -> None:
    with pytest.raises(CalibrationError, match="'t'.*oversampling"):
        TensorHistogram("t", fine_counts=np.zeros(12, dtype=np.int64), oversampling=8)
    with pytest.raises(CalibrationError, match="'t'.*not both"):
        TensorHistogram("t", counts=np.zeros(16, dtype=np.int64), oversampling=8)


def test_fine_edges_merge_exactly_under_growth() -> None:
    # Values exactly on fine edges (and the range top) are where float32 rounding could
    # put a value on the wrong side after the range grows; it must not.
    hist = TensorHistogram.empty("t", num_bins=16, oversampling=4)
    hist.update(np.arange(65, dtype=np.float32) * np.float32(0.1))  # range 6.4, 64 fine bins
    more = [np.arange(129, dtype=np.float32) * np.float32(0.1),   # up to 12.8: range x2
            np.arange(0, 513, 7, dtype=np.float32) * np.float32(0.1)]  # up to 51.1: x8
    for batch in more:
        hist.update(batch)
    one_pass = TensorHistogram.empty("t", num_bins=16, amax_range=hist.amax_range,
                                     oversampling=4)
    one_pass.update(np.concatenate([np.arange(65, dtype=np.float32) * np.float32(0.1), *more]))
    assert hist.amax_range == pytest.approx(51.2)
    np.testing.assert_array_equal(hist.fine_counts, one_pass.fine_counts)


@pytest.mark.parametrize("scale", [1e-35, 1.0, 1e35], ids=["tiny", "unit", "huge"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_streamed_equals_one_pass_for_any_dtype_and_magnitude(dtype: type, scale: float) -> None:
    with np.errstate(over="ignore", under="ignore"):
        batches = [(b * scale).astype(dtype) for b in growing_batches(seed=5, count=12)]
    if not all(np.isfinite(b).all() and b.any() for b in batches):
        pytest.skip("out of the dtype's range")
    streamed = TensorHistogram.empty("t")
    for batch in batches:
        streamed.update(batch)
    one_pass = TensorHistogram.empty("t", amax_range=streamed.amax_range)
    for batch in batches:
        one_pass.update(batch)
    np.testing.assert_array_equal(streamed.fine_counts, one_pass.fine_counts)
    assert streamed.num_zeros == one_pass.num_zeros


def relu_batches(seed: int = 6, count: int = 8, size: int = 50_000) -> list[np.ndarray]:
    """ReLU-like batches (half exact zeros, rare outliers) whose max drifts up and down."""
    rng = np.random.default_rng(seed)
    batches = []
    for k in range(count):
        values = np.maximum(rng.standard_normal(size), 0.0) * (1.0 + 0.3 * np.sin(k))
        values[rng.choice(size, 3, replace=False)] = rng.uniform(6.0, 9.0 + k, 3)
        batches.append(values.astype(np.float32))
    return batches


def test_finalized_is_exact_when_the_range_is_the_max() -> None:
    values = relu_batches()[0]
    hist = TensorHistogram.empty("t", num_bins=256)
    hist.update(values)  # one batch: amax_range == amax, edges coincide
    plain = TensorHistogram.empty("t", num_bins=256, oversampling=1)
    plain.update(values)
    final = hist.finalized()
    np.testing.assert_array_equal(final.counts, plain.counts)
    np.testing.assert_array_equal(final.counts, hist.counts)
    np.testing.assert_array_equal(hist.surely_occupied(), plain.counts > 0)


def test_finalized_regrids_to_the_max_within_one_fine_bin_per_edge() -> None:
    batches = relu_batches()
    streamed = TensorHistogram.empty("t", num_bins=256)
    for batch in batches:
        streamed.update(batch)
    everything = np.concatenate(batches)
    assert streamed.amax_range > 1.1 * streamed.amax  # the case the re-gridding is for
    exact = TensorHistogram.empty("t", num_bins=256, amax_range=float(everything.max()),
                                  oversampling=1)
    exact.update(everything)
    final = streamed.finalized()
    assert (final.num_bins, final.oversampling) == (256, 1)
    assert final.amax_range == final.amax == exact.amax_range
    assert (final.num_values, final.num_zeros) == (exact.num_values, exact.num_zeros)
    # Cumulative count at every edge: off by at most the fine bin holding that edge.
    fine = streamed.fine_counts
    edges = exact.edges[1:]
    holding = np.minimum(np.ceil(edges / (streamed.amax_range / fine.size)).astype(int) - 1,
                         fine.size - 1)
    error = np.abs(np.cumsum(final.counts) - np.cumsum(exact.counts))
    assert (error <= fine[holding]).all()
    assert error.max() > 0  # the bound is not vacuous here
    # A bin said to be surely occupied is occupied in the exact histogram.
    assert (exact.counts[streamed.surely_occupied()] > 0).all()


def test_finalized_keeps_exact_zeros_in_bin_0() -> None:
    hist = TensorHistogram.empty("t", num_bins=64)
    hist.update(np.array([0.0, 0.0, 0.0, 0.9, 1.0], dtype=np.float32))
    hist.update(np.array([1.7], dtype=np.float32))  # range 1.0 -> 2.0
    final = hist.finalized()
    assert final.counts[0] == 3 and final.num_zeros == 3 and final.counts.sum() == 6
    assert final.counts[-1] == 1  # the max sits in the last bin
    only_zeros = TensorHistogram.empty("z")
    only_zeros.update(np.zeros(5))
    assert only_zeros.finalized().counts[0] == 5


def test_streamed_entropy_matches_one_histogram_over_the_global_max() -> None:
    # The collector's range ends up to 2x the max; the methods still see TensorRT's grid.
    batches = relu_batches(seed=7, count=12, size=100_000)
    streamed = TensorHistogram.empty("t")
    for batch in batches:
        streamed.update(batch)
    reference = TensorHistogram.empty("t", amax_range=float(max(b.max() for b in batches)),
                                      oversampling=1)
    for batch in batches:
        reference.update(batch)
    ours, theirs = amax_entropy(streamed), amax_entropy(reference)
    assert ours == pytest.approx(theirs, rel=0.02)
    kept_bins, kl = entropy_divergences(reference)
    ours_kl = kl[int(round(ours / reference.bin_width)) - kept_bins[0]]
    assert np.isfinite(ours_kl) and ours_kl <= 1.05 * kl.min()


def test_collector_threads_give_the_same_histograms() -> None:
    rng = np.random.default_rng(8)
    batches = [{f"t{i}": rng.standard_normal(20_000 * (i + 1)).astype(np.float32) * (k + 1)
                for i in range(5)} for k in range(3)]
    serial, threaded = HistogramCollector(threads=1), HistogramCollector(threads=4)
    for batch in batches:
        serial.update(batch)
        threaded.update(batch)
    assert list(threaded) == list(serial)
    for name in serial:
        np.testing.assert_array_equal(threaded[name].fine_counts, serial[name].fine_counts)
        assert threaded[name].amax_range == serial[name].amax_range


def test_collector_raises_the_first_bad_tensor_and_still_adds_the_others() -> None:
    collector = HistogramCollector(threads=2)
    batch = {"good": np.ones(10), "bad": np.array([np.nan]), "worse": np.array([np.inf])}
    with pytest.raises(CalibrationError, match="'bad'"):
        collector.update(batch)
    assert collector["good"].num_values == 10
    assert collector["bad"].num_values == 0
