"""Bad quantization inputs through the real CLI: caches that must not be trusted
(`trtflow check-cache`, issue 18 item 8) and an fp8 target whose tensors overflow E4M3
after scaling (issue 16).

Each case: exit 2, one message naming the file/line or tensor and what was expected, no
traceback, nothing half-written, and the project's store, MLflow and Prefect left as
they were (the fp8 case: its shared stages ran and were stored whole, as a gate failure's
do; no fp8 engine is built or registered).
"""

from __future__ import annotations

import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import pytest

from ..unit.tiny import conv_bn_graph
from .conftest import fast_params, new_project, trtflow
from .test_bad_inputs import half_written, project_state


def _hex(value: float) -> str:
    return struct.pack(">f", value).hex()


HEADER = "TRT-100300-EntropyCalibration2"
CACHE_CASES = [
    # (id, cache lines, extra CLI args, expected message excerpt)
    ("subnormal-scale", (HEADER, "x: 3c010204", f"c: {_hex(1e-40)}"), (),
     "line 3: tensor 'c' has a subnormal scale"),
    ("scale-127x-overflows", (HEADER, f"x: {_hex(3.0e36)}"), (),
     "line 2: tensor 'x' has scale 3e+36, whose 127x overflows float32"),
    ("scale-448x-overflows-fp8", (HEADER, f"x: {_hex(1.0e36)}"), ("--fp8",),
     "line 2: tensor 'x' has scale 1e+36, whose 448x overflows float32"),
    ("nan-scale", (HEADER, "x: 7fc00000"), (), "line 2: tensor 'x' has scale nan"),
    ("inf-scale", (HEADER, "x: 3c010204", "", "c: 7f800000"), (),
     "line 4: tensor 'c' has scale inf"),
    ("foreign-calibrator", ("TRT-100300-KLCalibration", "x: 3c010204"), (),
     "line 1: foreign header 'TRT-100300-KLCalibration': calibrator 'KLCalibration' is not "
     "one TensorRT writes"),
    ("unknown-version", ("TRT-77-MinMaxCalibration", "x: 3c010204"), (),
     "line 1: header 'TRT-77-MinMaxCalibration' has an unknown TensorRT version 77"),
    ("future-version", ("TRT-990000-EntropyCalibration2", "x: 3c010204"), (),
     "unknown TensorRT version 990000"),
]


@pytest.fixture(scope="module")
def cache_results(tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, tuple[Path, list[str], subprocess.CompletedProcess[str]]]:
    """Every cache case's `trtflow check-cache` call, two at a time (each is a new process)."""
    def run(case: tuple) -> tuple[str, tuple]:
        case_id, lines, extra, _ = case
        root = tmp_path_factory.mktemp(case_id)
        onnx.save(conv_bn_graph(), root / "model.onnx")
        cache = root / "calibration.cache"
        cache.write_text("\n".join(lines) + "\n")
        before = sorted(p.name for p in root.iterdir())
        res = trtflow("check-cache", str(cache), str(root / "model.onnx"), *extra, cwd=root)
        return case_id, (root, before, res)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, CACHE_CASES))


@pytest.mark.parametrize("case_id, expect", [(c[0], c[3]) for c in CACHE_CASES],
                         ids=[c[0] for c in CACHE_CASES])
def test_untrustworthy_cache_is_refused(case_id: str, expect: str, cache_results: dict
                                        ) -> None:
    root, before, res = cache_results[case_id]
    assert res.returncode == 2, res.stderr
    message = " ".join(res.stderr.split())
    assert str(root / "calibration.cache") in message and expect in message, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert res.stderr.count("error:") == 1, res.stderr
    assert sorted(p.name for p in root.iterdir()) == before


def test_trusted_cache_passes(tmp_path: Path) -> None:
    onnx.save(conv_bn_graph(), tmp_path / "model.onnx")
    cache = tmp_path / "calibration.cache"
    cache.write_text(f"{HEADER}\nx: 3c010204\nc: {_hex(0.02)}\n")
    res = trtflow("check-cache", str(cache), str(tmp_path / "model.onnx"), "--fp8",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 tensor scales" in res.stdout


@pytest.mark.slow
def test_fp8_target_whose_tensors_overflow_e4m3_is_refused(tmp_path: Path,
                                                           digits_data: Path) -> None:
    """fp8_method percentile 99 leaves 1 % of the values of each tensor past 448 x scale."""
    root = new_project(tmp_path, digits_data, "fp8-overflow")
    params = fast_params(root, targets=("int8",), calibration={
        "method": "entropy", "fp8_method": "percentile", "percentile": 99.0})
    text = params.read_text().replace(
        "targets:\n", "targets:\n  fp8:\n    backend: onnxruntime\n    device: cpu\n"
        "    precision: fp8\n", 1)
    params.write_text(text)
    before = project_state(root)
    res = trtflow("run", str(params), "-t", "fp8", cwd=root)
    assert res.returncode == 2, res.stderr
    message = " ".join(res.stderr.split())
    assert "fp8 target:" in message and "overflow E4M3 after scaling" in message, res.stderr
    assert "use calibration.fp8_method: max" in message
    assert "Traceback" not in res.stderr + res.stdout
    assert half_written(root) == []
    after = project_state(root)
    assert after["mlflow"]["model_versions"] == before["mlflow"]["model_versions"]
    assert not any(k.startswith("build/") for k in after["store"]), "an fp8 engine was stored"
