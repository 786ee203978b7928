"""amax methods against independent references: numpy percentile, brute-force MSE on the
raw samples, and a direct (per-candidate) transcription of TensorRT's entropy search.

Histograms are made as the collector makes them (``TensorHistogram.empty``: fine bins);
the methods read their ``finalized()`` grid, exact here since one batch sets the range."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trtflow.errors import CalibrationError
from trtflow.quant.histogram import TensorHistogram
from trtflow.quant.methods import (
    AMAX_FLOOR,
    METHODS,
    amax_entropy,
    amax_max,
    amax_mse,
    amax_percentile,
    compute_amax,
    entropy_divergences,
    mse_curve,
    scale_from_amax,
)


def histogram_of(values: np.ndarray, name: str = "t") -> TensorHistogram:
    hist = TensorHistogram.empty(name)
    hist.update(values)
    return hist


def gaussian(n: int = 200_000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def relu_with_outliers(n: int = 200_000, seed: int = 1) -> np.ndarray:
    """ReLU output: half exact zeros, plus a few rare large activations."""
    rng = np.random.default_rng(seed)
    values = np.maximum(rng.standard_normal(n), 0.0)
    outliers = rng.choice(n, size=20, replace=False)
    values[outliers] = rng.uniform(8.0, 12.0, size=20)
    return values.astype(np.float32)


def reference_entropy_kl(counts: np.ndarray, num_quantized_bins: int = 128) -> np.ndarray:
    """TensorRT's EntropyCalibration2 search written out directly, one candidate at a time."""
    bins = counts.astype(np.float64)
    bins[0] = bins[1]  # suppress the zero spike
    divergences = []
    for i in range(num_quantized_bins, bins.size + 1):
        p = bins[:i].copy()
        p[i - 1] += bins[i:].sum()  # outliers go to the last kept bin
        # Quantize bins[:i] into the levels, then expand each level's mass
        # uniformly over the non-empty bins it came from.
        level_of = np.digitize(np.arange(i), np.linspace(0, i, num_quantized_bins + 1)) - 1
        nonempty = bins[:i] != 0
        level_total = np.bincount(level_of, weights=bins[:i], minlength=num_quantized_bins)
        level_nonempty = np.bincount(level_of, weights=nonempty, minlength=num_quantized_bins)
        q = np.zeros(i)
        q[nonempty] = level_total[level_of[nonempty]] / level_nonempty[level_of[nonempty]]
        p, q = p / p.sum(), q / q.sum()
        if np.any((p > 0) & (q == 0)):
            divergences.append(np.inf)
            continue
        mask = p > 0
        divergences.append(float(np.sum(p[mask] * np.log(p[mask] / q[mask]))))
    return np.array(divergences)


def raw_int8_mse(values: np.ndarray, amax: np.ndarray) -> np.ndarray:
    """Mean squared error of symmetric int8 fake-quantisation of the raw values, per amax."""
    x = values.astype(np.float64)[None, :]
    scale = np.asarray(amax, dtype=np.float64)[:, None] / 127.0
    quantized = np.clip(np.round(x / scale), -127, 127) * scale
    return ((x - quantized) ** 2).mean(axis=1)


def test_max_is_the_true_max() -> None:
    values = gaussian()
    assert amax_max(histogram_of(values)) == float(np.abs(values).max())


@pytest.mark.parametrize("percentile", [50.0, 99.0, 99.9, 99.99, 100.0])
def test_percentile_matches_numpy_within_a_bin(percentile: float) -> None:
    values = gaussian()
    hist = histogram_of(values)
    expected = float(np.percentile(np.abs(values), percentile))
    assert amax_percentile(hist, percentile) == pytest.approx(expected, abs=hist.bin_width)


@pytest.mark.parametrize("percentile", [0.0, -1.0, 100.5, float("nan"), True])
def test_bad_percentile_raises_naming_the_tensor(percentile: float) -> None:
    with pytest.raises(CalibrationError, match="input_1:0"):
        amax_percentile(histogram_of(gaussian(1000), "input_1:0"), percentile)


@pytest.mark.parametrize("values", [
    gaussian(20_000, seed=5),
    np.random.default_rng(6).standard_t(3, 20_000).astype(np.float32),  # heavy tails
    relu_with_outliers(20_000, seed=7),
], ids=["gaussian", "student-t", "relu-outliers"])
def test_mse_matches_brute_force_on_raw_samples(values: np.ndarray) -> None:
    hist = histogram_of(values)
    candidates = hist.finalized().edges[1:]
    brute_errors = np.concatenate(
        [raw_int8_mse(values, candidates[k:k + 256]) for k in range(0, candidates.size, 256)])
    best = float(brute_errors.min())
    chosen = amax_mse(hist)
    assert float(raw_int8_mse(values, np.array([chosen]))[0]) <= 1.02 * best
    assert chosen == pytest.approx(float(candidates[np.argmin(brute_errors)]), rel=0.05)


def test_mse_clips_a_lone_far_outlier() -> None:
    # Summed squared error: the step costs 200k values t**2 / (12 * 127**2) ~ 1.03 t**2,
    # clipping costs the outlier (50 - t)**2; the sum is least near t = 25, not at 50.
    values = gaussian()
    values[0] = 50.0
    assert 20.0 < amax_mse(histogram_of(values)) < 30.0


def test_mse_keeps_outliers_that_are_not_rare_enough() -> None:
    # 20 activations near 10 among 200k: clipping them at ~4 costs 20 * 6**2 = 720,
    # more than the coarser step costs the rest, so MSE keeps them (unlike entropy).
    values = relu_with_outliers()
    assert amax_mse(histogram_of(values)) > 0.8 * float(values.max())


@pytest.mark.parametrize("values", [gaussian(), relu_with_outliers()], ids=["gaussian", "relu"])
def test_entropy_matches_direct_kl_search_on_the_same_grid(values: np.ndarray) -> None:
    hist = histogram_of(values)
    grid = hist.finalized()
    kept_bins, divergences = entropy_divergences(hist)
    expected = reference_entropy_kl(grid.counts)
    np.testing.assert_array_equal(kept_bins, np.arange(128, grid.num_bins + 1))
    np.testing.assert_array_equal(np.isinf(divergences), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(divergences[finite], expected[finite], rtol=1e-7, atol=1e-12)

    best = expected.size - 1 - int(np.argmin(expected[::-1]))
    reference_amax = min(grid.edges[128 + best], hist.amax)
    assert amax_entropy(hist) == pytest.approx(reference_amax, rel=0.02)


def test_entropy_clips_outliers_but_keeps_the_bulk() -> None:
    values = relu_with_outliers()
    amax = amax_entropy(histogram_of(values))
    assert 2.0 < amax < 0.8 * float(values.max())


def test_entropy_ignores_the_zero_spike() -> None:
    values = relu_with_outliers()
    with_zeros = amax_entropy(histogram_of(values))
    without_zeros = amax_entropy(histogram_of(values[values > 0]))
    assert with_zeros == without_zeros


def test_entropy_keeps_the_full_range_of_uniform_data() -> None:
    values = np.random.default_rng(8).uniform(-3.0, 3.0, 200_000)
    hist = histogram_of(values)
    assert amax_entropy(hist) == pytest.approx(hist.amax, abs=hist.bin_width)


@pytest.mark.parametrize("method", METHODS)
def test_all_zero_tensor_gets_a_positive_scale(method: str) -> None:
    amax = compute_amax(histogram_of(np.zeros((4, 8), dtype=np.float32)), method)
    assert amax == AMAX_FLOOR
    scale = scale_from_amax(amax)
    assert scale > 0 and np.float32(scale) > 0 and math.isfinite(1.0 / np.float32(scale))


@pytest.mark.parametrize("method", METHODS)
def test_empty_histogram_raises_naming_the_tensor(method: str) -> None:
    with pytest.raises(CalibrationError, match="/fc/Gemm_output_0"):
        compute_amax(TensorHistogram("/fc/Gemm_output_0"), method)


def test_compute_amax_dispatches_and_rejects_unknown_names() -> None:
    hist = histogram_of(gaussian(10_000))
    assert compute_amax(hist, "percentile", percentile=99.0) == amax_percentile(hist, 99.0)
    assert compute_amax(hist, "entropy") == amax_entropy(hist)
    with pytest.raises(CalibrationError, match="unknown calibration method 'kl'"):
        compute_amax(hist, "kl")
    with pytest.raises(CalibrationError, match="bad options"):
        compute_amax(hist, "max", percentile=99.0)


def test_scale_from_amax() -> None:
    assert scale_from_amax(127.0) == 1.0
    assert scale_from_amax(0.0) == AMAX_FLOOR / 127
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(CalibrationError, match="conv"):
            scale_from_amax(bad, name="conv")


def test_entropy_needs_more_bins_than_quantized_levels() -> None:
    hist = TensorHistogram.empty("small_grid", num_bins=64)
    hist.update(gaussian(1000))
    with pytest.raises(CalibrationError, match="small_grid"):
        amax_entropy(hist)


@pytest.mark.parametrize("values", [
    gaussian(50_000, seed=9),
    relu_with_outliers(50_000, seed=10),
    np.random.default_rng(11).integers(0, 256, 50_000).astype(np.float32),  # spiky: pixels
    np.concatenate([np.zeros(100), np.full(1000, 3.0), [40.0]]),  # two spikes and a far one
], ids=["gaussian", "relu-outliers", "pixels", "spikes"])
def test_mse_search_finds_the_argmin_of_the_whole_curve(values: np.ndarray) -> None:
    hist = histogram_of(values)
    candidates, errors = mse_curve(hist)
    assert amax_mse(hist) == min(float(candidates[int(np.argmin(errors))]), hist.amax)


def test_mse_reads_the_grid_over_the_max_not_the_grown_range() -> None:
    values = gaussian(50_000, seed=12)
    streamed = TensorHistogram.empty("t")
    streamed.update(values[:1000] * 0.55)
    streamed.update(values)  # the range doubles to about twice the max
    assert streamed.amax_range > 1.5 * streamed.amax
    candidates, _ = mse_curve(streamed)
    assert candidates[-1] == pytest.approx(streamed.amax)
    assert candidates.size == streamed.num_bins


def test_entropy_never_pours_outliers_into_a_bin_that_may_be_empty() -> None:
    # A re-gridded bin whose count came only from fine bins split by its edges may really
    # be empty; TensorRT's search on the exact grid would give it infinite divergence.
    rng = np.random.default_rng(13)
    hist = TensorHistogram.empty("t", num_bins=256, oversampling=4)
    hist.update(np.array([1.0]))
    hist.update(np.concatenate([rng.exponential(0.4, 20_000), [4.2]]))  # range 1 -> 8
    kept_bins, kl = entropy_divergences(hist)
    grid, sure = hist.finalized(), hist.surely_occupied()
    outliers = grid.num_values - np.cumsum(grid.counts)[kept_bins - 1]
    maybe_empty = (outliers > 0) & ~sure[kept_bins - 1]
    assert (grid.counts[kept_bins - 1][maybe_empty] > 0).any()  # counted, yet not sure
    assert np.isinf(kl[maybe_empty]).all()
    chosen = int(round(amax_entropy(hist) / grid.bin_width))
    assert sure[chosen - 1]


# --- exact entropy: bit-equal to NVIDIA's _compute_amax_entropy ---------------------------

def nvidia_compute_amax_entropy(calib_hist: np.ndarray, calib_bin_edges: np.ndarray,
                                num_bits: int = 8, unsigned: bool = False, stride: int = 1,
                                start_bin: int = 128) -> float:
    """A direct numpy transcription of ``_compute_amax_entropy`` in NVIDIA ModelOpt
    (modelopt/torch/quantization/calib/histogram.py, 0.47; the same function as
    pytorch-quantization's), loop for loop; ``scipy.stats.entropy`` as there."""
    from collections import Counter

    from scipy.stats import entropy

    bins = calib_hist[:].astype(np.float64)
    bins[0] = bins[1]
    total_data = np.sum(bins)
    divergences = []
    nbins = 1 << (num_bits - 1 + int(unsigned))
    stop = len(bins)
    new_density_counts = np.zeros(nbins, dtype=np.float64)
    for i in range(start_bin, stop + 1, stride):
        new_density_counts.fill(0)
        space = np.linspace(0, i, num=nbins + 1)
        digitized_space = np.digitize(range(i), space) - 1
        digitized_space[bins[:i] == 0] = -1
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density_counts[digitized] += bins[idx]
        counter = Counter(digitized_space)
        for key, val in counter.items():
            if key != -1:
                new_density_counts[key] = new_density_counts[key] / val
        new_density = np.zeros(i, dtype=np.float64)
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density[idx] = new_density_counts[digitized]
        total_counts_new = np.sum(new_density) + np.sum(bins[i:])
        reference_density = np.array(bins[: len(digitized_space)])
        reference_density[-1] += np.sum(bins[i:])
        total_counts_old = np.sum(reference_density)
        assert round(total_counts_new) == total_data and round(total_counts_old) == total_data
        divergences.append(entropy(reference_density, new_density))
    divergences_array = np.array(divergences)
    last_argmin = len(divergences_array) - 1 - np.argmin(divergences_array[::-1])
    return float(calib_bin_edges[last_argmin * stride + start_bin])


def nvidia_histogram(batches: list[np.ndarray], num_bins: int = 2048
                     ) -> tuple[np.ndarray, np.ndarray]:
    """TensorRT's grid, computed directly: 2048 bins of |x| over [0, global max]."""
    amax = max(float(np.abs(b).max()) for b in batches)
    counts = np.zeros(num_bins, dtype=np.int64)
    edges = np.linspace(0.0, amax, num_bins + 1)
    for batch in batches:
        counts += np.histogram(np.abs(batch.astype(np.float64)), bins=num_bins,
                               range=(0.0, amax))[0]
    return counts, edges


def exact_collected(batches: list[np.ndarray], name: str = "t") -> TensorHistogram:
    from trtflow.quant.exact import ExactHistogramCollector, MaxCollector

    maxima = MaxCollector()
    for batch in batches:
        maxima.update({name: batch})
    exact = ExactHistogramCollector(maxima.amax, threads=2)
    for batch in batches:
        exact.update({name: batch})
    return exact.collector()[name]


@pytest.mark.parametrize("kind", [
    "gaussian", "relu6_outliers",
    pytest.param("relu", marks=pytest.mark.slow), pytest.param("uniform", marks=pytest.mark.slow)])
def test_exact_entropy_is_bit_equal_to_nvidia_transcription(kind: str) -> None:
    rng = np.random.default_rng(11)
    batches = []
    for _ in range(3):
        x = rng.standard_normal(20000).astype(np.float32)
        if kind == "relu":
            x = np.maximum(x, 0)
        elif kind == "relu6_outliers":
            x = np.minimum(np.maximum(x * 2, 0), 6)
            x[:3] = rng.uniform(20, 40, 3)
        elif kind == "uniform":
            x = rng.uniform(-3, 3, 20000).astype(np.float32)
        batches.append(x)
    counts, edges = nvidia_histogram(batches)
    hist = exact_collected(batches)
    np.testing.assert_array_equal(hist.counts, counts)
    assert amax_entropy(hist) == nvidia_compute_amax_entropy(counts, edges)


@pytest.mark.slow
def test_exact_entropy_is_bit_equal_on_every_resnet18_tensor(demo_root, tmp_path) -> None:
    """Every float activation of the cleaned resnet18 graph, 64 calibration images: the
    exact calibration's entropy amax equals the transcription's on NVIDIA's grid."""
    from pathlib import Path

    import onnx

    from trtflow.context import Context
    from trtflow.params import CalibrationConfig, load_params
    from trtflow.plan import CLEAN_FILE, CLEANUP, EXPORT
    from trtflow.quant.collect import collect_histograms
    from trtflow.quant.qdq import float_activations
    from trtflow.stage import run_step

    params = load_params(Path(__file__).resolve().parents[2] / "params" / "resnet18.yaml")
    ctx = Context.create(params, demo_root, tmp_path / "store")
    cleaned = run_step(CLEANUP, ctx, None, [run_step(EXPORT, ctx, None, [])])
    model = onnx.load(str(cleaned.file(CLEAN_FILE)))
    images = np.load(demo_root / "data" / "resnet18" / "calibration.npz")["image"][:64]
    feeds = [{"image": images[i:i + 16]} for i in range(0, 64, 16)]
    tensors = float_activations(model)
    exact = collect_histograms(model, tensors, iter(feeds), 2, mode="exact",
                               batches_again=lambda: iter(feeds)).collector
    cfg = CalibrationConfig()
    assert cfg.num_bins == 2048
    mismatches = []
    for name in tensors:
        hist = exact[name]
        if hist.amax == 0.0:
            continue
        edges = np.linspace(0.0, hist.amax, hist.num_bins + 1)
        theirs = nvidia_compute_amax_entropy(hist.counts.copy(), edges)
        if amax_entropy(hist) != max(theirs, AMAX_FLOOR):
            mismatches.append((name, amax_entropy(hist), theirs))
    print(f"resnet18: {len(tensors)} tensors, {len(mismatches)} mismatches")
    assert mismatches == []
