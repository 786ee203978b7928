"""The calibration artifact: the calibrate stage's directory, and the only code that
names its files.

A calibration directory holds the chosen scales (`scales.json`), TensorRT's text cache
of them (`calibration.cache`), the raw histograms (`histograms.npz`), the Q/DQ graphs
placed the TensorRT way (`model.qdq.onnx`, INT8; `model.qdq.fp8.onnx`, FP8) and the
selection-split accuracy report (`accuracy.json`: method scores, per-layer sensitivity,
the float fallback). Backends, reports and the select step read it through
`Calibration`, never by file name.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtflow.errors import BuildError, CalibrationError

if TYPE_CHECKING:
    import onnx

SCALES_FILE = "scales.json"
CACHE_FILE = "calibration.cache"
HISTOGRAMS_FILE = "histograms.npz"
QDQ_FILE = "model.qdq.onnx"
FP8_QDQ_FILE = "model.qdq.fp8.onnx"
ACCURACY_FILE = "accuracy.json"


def read_scales(path: Path) -> dict[str, float]:
    """tensor -> amax from a scales.json, checked."""
    try:
        table = json.loads(path.read_text())
        return {t: float(v["amax"]) for t, v in table.items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CalibrationError(f"{path}: not a valid scales.json ({exc})") from None


@dataclass(frozen=True)
class Calibration:
    """A calibrate stage directory, as its readers see it."""

    path: Path

    @property
    def scales_file(self) -> Path:
        return self.path / SCALES_FILE

    @property
    def cache_file(self) -> Path:
        """TensorRT's calibration cache (every float activation of the graph)."""
        return self.path / CACHE_FILE

    @property
    def histograms_file(self) -> Path:
        return self.path / HISTOGRAMS_FILE

    @property
    def accuracy_file(self) -> Path:
        return self.path / ACCURACY_FILE

    def amax(self) -> dict[str, float]:
        """tensor -> amax of the chosen method."""
        return read_scales(self.scales_file)

    def scales(self) -> dict[str, dict[str, Any]]:
        """The full scales.json table: amax, scale, method, every method's amax, whether
        the Q/DQ model quantizes the tensor, and its FP8 row."""
        try:
            table: dict[str, dict[str, Any]] = json.loads(self.scales_file.read_text())
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"{self.scales_file}: not a valid scales.json ({exc})"
                                   ) from None
        return table

    def accuracy(self) -> dict[str, Any]:
        """The selection-split report: method scores, sensitivity, fallback."""
        report: dict[str, Any] = json.loads(self.accuracy_file.read_text())
        return report

    def float_layers(self) -> list[str]:
        """Layers the fallback kept in float (every build honours them)."""
        return list((self.accuracy().get("fallback") or {}).get("skip", []))

    def qdq_model(self, precision: str = "int8") -> Path:
        """The TensorRT-placement Q/DQ graph of `precision` ('int8' or 'fp8'), checked."""
        name = FP8_QDQ_FILE if precision == "fp8" else QDQ_FILE
        path = self.path / name
        if not path.is_file():
            raise BuildError(f"{self.path}: the calibration has no {precision} Q/DQ graph "
                             f"({name}; a calibration from before {precision} support?); "
                             "recalibrate")
        return path

    def qdq_model_name(self, precision: str = "int8") -> str:
        """The file name of that graph, for reports that record which one was used."""
        return FP8_QDQ_FILE if precision == "fp8" else QDQ_FILE

    def logged_files(self) -> list[Path]:
        """The files a run logs (MLflow's `calibration/` artifacts), those that exist:
        scales, cache, accuracy report, INT8 Q/DQ graph and histograms (a few MB at most,
        for `trtflow report`)."""
        names = (SCALES_FILE, CACHE_FILE, ACCURACY_FILE, QDQ_FILE, HISTOGRAMS_FILE)
        return [self.path / n for n in names if (self.path / n).is_file()]

    # --- writing: the calibrate stage only ---------------------------------------

    def write_cache(self, scales: Mapping[str, float], algorithm: str) -> int:
        """TensorRT's text cache of `scales` (tensor -> scale); the entries written."""
        from trtflow.quant.cache import write_calibration_cache

        write_calibration_cache(self.cache_file, scales, algorithm=algorithm)
        return len(scales)

    def write_scales(self, table: Mapping[str, Mapping[str, Any]]) -> None:
        """scales.json: per tensor amax, scale, method, every method's amax, whether the
        Q/DQ model quantizes it, its FP8 row."""
        self.scales_file.write_text(json.dumps(table, indent=2))

    def write_qdq_model(self, model: onnx.ModelProto, precision: str = "int8") -> Path:
        import onnx

        path = self.path / self.qdq_model_name(precision)
        onnx.save_model(model, str(path))
        return path

    def write_accuracy(self, report: Mapping[str, Any]) -> None:
        self.accuracy_file.write_text(json.dumps(report, indent=2))

    def with_float_layers(self, layers: list[str], dest: Path) -> Calibration:
        """A copy at `dest` whose float fallback also keeps `layers` in float (the builds
        reading it leave them unquantized)."""
        shutil.copytree(self.path, dest)
        copy = Calibration(dest)
        meta = copy.accuracy()
        fallback = dict(meta.get("fallback") or {})
        fallback["skip"] = sorted(set(fallback.get("skip", [])) | set(layers))
        copy.write_accuracy({**meta, "fallback": fallback})
        return copy
