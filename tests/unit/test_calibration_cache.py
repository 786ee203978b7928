"""TensorRT calibration cache text format: bit-exact round trip and clear errors."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from trtflow.errors import CalibrationError
from trtflow.quant.cache import (
    DEFAULT_TRT_VERSION,
    CalibrationCacheHeader,
    check_trustworthy,
    read_calibration_cache,
    trt_version_number,
    write_calibration_cache,
)

AWKWARD_NAMES = [
    "images",
    "input_1:0",
    "/model.0/act/Mul_output_0",
    "conv1/convolution:0",
    "(Unnamed Layer* 4) [Fully Connected]_output",
    "ends:with:colon:",
    "a: b",
]


def float32_scales(seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {name: float(np.float32(s)) for name, s in zip(
        AWKWARD_NAMES, rng.uniform(1e-4, 1.0, len(AWKWARD_NAMES)), strict=True)}


def test_round_trip_is_bit_exact_with_awkward_names(tmp_path) -> None:
    scales = float32_scales()
    path = write_calibration_cache(tmp_path / "calibration.cache", scales)
    header, restored = read_calibration_cache(path)
    assert header == CalibrationCacheHeader(DEFAULT_TRT_VERSION, "EntropyCalibration2")
    assert list(restored) == AWKWARD_NAMES  # order kept
    assert restored == scales
    original_bytes = path.read_bytes()
    write_calibration_cache(path, restored)
    assert path.read_bytes() == original_bytes


def test_lines_hold_big_endian_float32_hex(tmp_path) -> None:
    scales = {"one": 1.0, "eighth": 0.125, **float32_scales(1)}
    path = write_calibration_cache(tmp_path / "calibration.cache", scales)
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    assert lines[1:3] == ["one: 3f800000", "eighth: 3e000000"]
    for line, (name, scale) in zip(lines[1:], scales.items(), strict=True):
        assert line == f"{name}: {struct.pack('>f', scale).hex()}"


def test_float64_scales_are_stored_as_float32(tmp_path) -> None:
    path = write_calibration_cache(tmp_path / "c.cache", {"x": 0.1, "y": 3.3 / 127})
    _, restored = read_calibration_cache(path)
    assert restored == {"x": float(np.float32(0.1)), "y": float(np.float32(3.3 / 127))}


def test_header_version_is_configurable(tmp_path) -> None:
    path = write_calibration_cache(tmp_path / "c.cache", {"x": 1.0}, version=8601)
    assert path.read_text().splitlines()[0] == "TRT-8601-EntropyCalibration2"
    assert read_calibration_cache(path)[0].version == 8601
    assert trt_version_number(10, 3, 0) == 100300 == DEFAULT_TRT_VERSION
    assert trt_version_number(8, 6, 1) == 8601


def test_reads_crlf_and_unpadded_hex(tmp_path) -> None:
    path = tmp_path / "c.cache"
    path.write_bytes(b"TRT-8600-EntropyCalibration2\r\nimages: 3c00f9f4\r\ntiny: 800000\r\n")
    header, scales = read_calibration_cache(path)
    assert header == CalibrationCacheHeader(8600, "EntropyCalibration2")
    assert scales["images"] == struct.unpack(">f", bytes.fromhex("3c00f9f4"))[0]
    assert scales["tiny"] == struct.unpack(">f", bytes.fromhex("00800000"))[0]


@pytest.mark.parametrize(("text", "line"), [
    ("hello\nx: 3f800000\n", 1),
    ("", 1),
    ("TRT-100300-FancyCalibration\n", 1),
    ("TRT-100300-EntropyCalibration2\nx: 3f800000\nbroken line\n", 3),
    ("TRT-100300-EntropyCalibration2\nx: 3f80000g\n", 2),
    ("TRT-100300-EntropyCalibration2\nx: 3f8000001\n", 2),
    ("TRT-100300-EntropyCalibration2\n: 3f800000\n", 2),
    ("TRT-100300-EntropyCalibration2\nx: 3f800000\nx: 3f800000\n", 3),
    ("TRT-100300-EntropyCalibration2\nzero: 00000000\n", 2),
    ("TRT-100300-EntropyCalibration2\nnegative: bf800000\n", 2),
    ("TRT-100300-EntropyCalibration2\ninf: 7f800000\n", 2),
    ("TRT-100300-EntropyCalibration2\nnan: 7fc00000\n", 2),
])
def test_malformed_cache_error_names_file_and_line(tmp_path, text: str, line: int) -> None:
    path = tmp_path / "broken.cache"
    path.write_text(text)
    with pytest.raises(CalibrationError) as excinfo:
        read_calibration_cache(path)
    assert str(path) in str(excinfo.value)
    assert f"line {line}:" in str(excinfo.value)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf"), 1e-50, 1e39])
def test_write_rejects_scales_that_are_not_positive_finite_float32(tmp_path, scale) -> None:
    path = tmp_path / "c.cache"
    path.write_text("previous\n")
    with pytest.raises(CalibrationError, match="/conv1/Conv_output_0"):
        write_calibration_cache(path, {"ok": 1.0, "/conv1/Conv_output_0": scale})
    assert path.read_text() == "previous\n"  # nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.cache"]


def test_write_rejects_names_with_newlines(tmp_path) -> None:
    with pytest.raises(CalibrationError, match="one line"):
        write_calibration_cache(tmp_path / "c.cache", {"a\nb": 1.0})


# --- caches that must not be trusted (issue 18, item 8) ------------------------------------

def _cache(tmp_path, *lines: str) -> str:
    path = tmp_path / "calibration.cache"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _hex(value: float) -> str:
    return struct.pack(">f", value).hex()


@pytest.mark.parametrize("lines, message", [
    (("TRT-100300-EntropyCalibration2", "a: 3c010204", f"b: {_hex(1e-39)}"),
     r"line 3: tensor 'b' has a subnormal scale"),
    (("TRT-100300-EntropyCalibration2", f"a: {_hex(3.0e36)}"),
     r"line 2: tensor 'a' has scale 3e\+36, whose 127x overflows float32"),
    (("TRT-100300-EntropyCalibration2", "a: 7fc00000"), r"line 2: tensor 'a' has scale nan"),
    (("TRT-100300-EntropyCalibration2", "a: 7f800000"), r"line 2: tensor 'a' has scale inf"),
    (("TRT-100300-PercentileCalibration", "a: 3c010204"),
     r"line 1: foreign header .*'PercentileCalibration' is not one TensorRT writes"),
    (("TRT-4242-EntropyCalibration2", "a: 3c010204"),
     r"line 1: header .* unknown TensorRT version 4242"),
    (("TRT-999999-MinMaxCalibration", "a: 3c010204"), r"unknown TensorRT version 999999"),
])
def test_untrustworthy_caches_are_refused_naming_the_line(tmp_path, lines, message) -> None:
    with pytest.raises(CalibrationError, match=message):
        check_trustworthy(_cache(tmp_path, *lines))


def test_fp8_check_refuses_scales_whose_448x_overflows(tmp_path) -> None:
    path = _cache(tmp_path, "TRT-8601-EntropyCalibration2", f"a: {_hex(1.0e36)}")
    assert check_trustworthy(path).version == 8601  # 127 x 1e36 fits in float32
    with pytest.raises(CalibrationError, match=r"line 2: .* whose 448x overflows float32"):
        check_trustworthy(path, 448.0)


def test_trusted_cache_passes_with_its_header(tmp_path) -> None:
    path = write_calibration_cache(tmp_path / "c.cache", {"x": 0.01, "y": 2.0**-120})
    assert check_trustworthy(path) == CalibrationCacheHeader(DEFAULT_TRT_VERSION)
