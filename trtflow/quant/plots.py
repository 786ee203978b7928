"""Histogram plots with each method's threshold, for reports and MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trtflow.quant.collector import HistogramCollector
from trtflow.quant.methods import REGISTRY

METHOD_COLORS = {name: method.color for name, method in REGISTRY.items()}


def sensitive_tensors(accuracy_json: Path, scales_json: Path, limit: int = 6) -> list[str]:
    """Tensors to plot: those where the four methods disagree most about amax."""
    scales = json.loads(scales_json.read_text())
    spread = {t: (max(v["amax_by_method"].values()) / max(min(v["amax_by_method"].values()),
                                                         1e-12))
              for t, v in scales.items() if v.get("amax_by_method")}
    return sorted(spread, key=lambda t: -spread[t])[:limit]


def plot_thresholds(histograms_npz: Path, scales_json: Path, tensors: list[str],
                    path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    collector = HistogramCollector.load_npz(histograms_npz)
    scales = json.loads(scales_json.read_text())
    cols = 2
    rows = max(1, -(-len(tensors) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, tensors, strict=False):
        hist = collector[name]
        edges = hist.edges
        ax.fill_between(edges[:-1], np.maximum(hist.counts, 1), step="post", alpha=0.4,
                        color="gray")
        ax.set_yscale("log")
        for method, amax in scales[name]["amax_by_method"].items():
            style = "-" if method == scales[name]["method"] else "--"
            ax.axvline(amax, color=METHOD_COLORS.get(method, "k"), linestyle=style,
                       label=f"{method} {amax:.3g}")
        ax.set_xlim(0, max(hist.amax, 1e-12) * 1.05)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("|x|")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tensors):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
