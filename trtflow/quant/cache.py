"""TensorRT calibration cache (text format): writer and reader.

The format TensorRT <= 10 and ONNX Runtime's TensorRT provider read::

    TRT-100300-EntropyCalibration2
    images: 3c00f9f4
    /model.0/act/Mul_output_0: 3e6c9314

a header ``TRT-<version>-<algorithm>``, then one ``tensor_name: <hex>`` line per
tensor, the hex being the big-endian IEEE-754 bits of the float32 scale
(``scale = amax / 127``). Names may contain ':' (``input_1:0``), so a line is split
at its last colon.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trtflow.atomic import atomic_file
from trtflow.errors import CalibrationError

# TensorRT 10.3.0. TensorRT >= 10 encodes its version as major*10000 + minor*100 +
# patch (NVIDIA/TensorRT, tag v10.3.0, include/NvInferRuntimeBase.h:
# NV_TENSORRT_VERSION_INT), so 10.3.0 writes 100300; TensorRT 8 used major*1000 +
# ..., hence 8600 in NVIDIA-AI-IOT/cuDLA-samples data/model/qat2ptq.cache
# ("TRT-8600-EntropyCalibration2"). The TensorRT 10 caches NVIDIA ships, DeepStream
# 7.1+'s samples/models/Primary_Detector/cal_trt.bin, begin
# "TRT-100300-EntropyCalibration2".
DEFAULT_TRT_VERSION = 100300
DEFAULT_ALGORITHM = "EntropyCalibration2"
ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration",
              "LegacyCalibration")
_HEADER = re.compile(r"TRT-(\d+)-([A-Za-z0-9]+)")
# Versions a cache header may carry: TensorRT 8.x (major*1000+...) and 10.x/11.x
# (major*10000+...); anything else is a version trtflow does not know.
KNOWN_VERSIONS = (range(8000, 9000), range(100000, 120000))
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32
# TensorRT writes 8 digits; some tools (hex() without padding) write fewer.
_HEX_SCALE = re.compile(r"[0-9a-fA-F]{1,8}")


@dataclass(frozen=True)
class CalibrationCacheHeader:
    """The first line of a calibration cache: TensorRT version number and algorithm."""

    version: int
    algorithm: str = DEFAULT_ALGORITHM

    def __str__(self) -> str:
        return f"TRT-{self.version}-{self.algorithm}"


def trt_version_number(major: int, minor: int, patch: int) -> int:
    """The integer TensorRT puts in the header: 10.3.0 -> 100300, 8.6.1 -> 8601."""
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def scale_to_hex(scale: float) -> str:
    """Big-endian float32 bits of ``scale`` as 8 lower-case hex digits."""
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    """Inverse of :func:`scale_to_hex` (shorter hex is left-padded with zeros)."""
    return struct.unpack(">f", bytes.fromhex(text.rjust(8, "0")))[0]


def write_calibration_cache(path: str | Path, scales: Mapping[str, float],
                            version: int = DEFAULT_TRT_VERSION,
                            algorithm: str = DEFAULT_ALGORITHM) -> Path:
    """Write ``scales`` (tensor name -> scale) as a TensorRT calibration cache, atomically.

    Scales are stored as float32; each must stay positive and finite after that
    rounding. Lines keep the mapping's order. The file is written to a temporary
    file in the same folder and renamed, so a reader never sees half a cache.
    """
    path = Path(path)
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        raise CalibrationError(f"calibration cache {path}: version must be a positive"
                               f" integer like {DEFAULT_TRT_VERSION}, got {version!r}")
    if algorithm not in ALGORITHMS:
        raise CalibrationError(f"calibration cache {path}: unknown algorithm {algorithm!r},"
                               f" expected one of {list(ALGORITHMS)}")
    lines = [str(CalibrationCacheHeader(version, algorithm))]
    for name, scale in scales.items():
        if not isinstance(name, str) or not name or "\n" in name or "\r" in name:
            raise CalibrationError(f"calibration cache {path}: tensor name {name!r} must be a"
                                   " non-empty string on one line")
        try:
            scale32 = struct.unpack(">f", struct.pack(">f", scale))[0]
        except (struct.error, OverflowError, TypeError) as exc:
            raise CalibrationError(f"calibration cache {path}: tensor {name!r}: scale {scale!r}"
                                   " is not a float32 number") from exc
        if not (math.isfinite(scale32) and scale32 > 0.0):
            raise CalibrationError(f"calibration cache {path}: tensor {name!r}: scale {scale!r}"
                                   " must be positive and finite as a float32")
        lines.append(f"{name}: {scale_to_hex(scale32)}")
    data = ("\n".join(lines) + "\n").encode("utf-8")
    with atomic_file(path) as f:
        f.write(data)
    return path


def read_calibration_cache(path: str | Path) -> tuple[CalibrationCacheHeader, dict[str, float]]:
    """Read a calibration cache; returns its header and ``{tensor name: float32 scale}``.

    A bad header, a malformed line, a repeated tensor or a scale that is not
    positive and finite raises CalibrationError naming the file and line number.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise CalibrationError(f"calibration cache {path}: cannot read it: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"calibration cache {path}: not UTF-8 text ({exc})") from exc
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    header_match = _HEADER.fullmatch(lines[0].strip())
    if header_match is not None and header_match.group(2) not in ALGORITHMS:
        raise CalibrationError(
            f"calibration cache {path}: line 1: foreign header {lines[0][:80]!r}: calibrator"
            f" {header_match.group(2)!r} is not one TensorRT writes ({list(ALGORITHMS)})")
    if header_match is None:
        raise CalibrationError(
            f"calibration cache {path}: line 1: bad header {lines[0][:80]!r}; expected"
            f" 'TRT-<version>-<algorithm>' such as"
            f" '{CalibrationCacheHeader(DEFAULT_TRT_VERSION)}'")
    header = CalibrationCacheHeader(int(header_match.group(1)), header_match.group(2))
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, colon, value = line.rpartition(":")
        value = value.strip()
        if not colon or not name or not _HEX_SCALE.fullmatch(value):
            raise CalibrationError(
                f"calibration cache {path}: line {number}: malformed {line[:80]!r};"
                " expected 'tensor_name: <8 hex digits>'")
        if name in scales:
            raise CalibrationError(
                f"calibration cache {path}: line {number}: tensor {name!r} appears twice")
        scale = hex_to_scale(value)
        if not (math.isfinite(scale) and scale > 0.0):
            raise CalibrationError(
                f"calibration cache {path}: line {number}: tensor {name!r} has scale {scale}"
                f" (0x{value}); a scale must be positive and finite")
        scales[name] = scale
    return header, scales


def check_trustworthy(path: str | Path, qmax: float = 127.0) -> CalibrationCacheHeader:
    """Refuse a cache that must not be trusted, naming the line: a foreign header (an
    algorithm TensorRT does not write, or a version outside TensorRT 8, 10 and 11), and
    scales that are subnormal, or whose ``qmax``x (127 for int8, 448 for FP8) overflows
    float32. NaN/Inf, zero and negative scales are refused by the reader itself."""
    path = Path(path)
    header, scales = read_calibration_cache(path)
    first = path.read_bytes().decode("utf-8").split("\n", 1)[0].strip()
    if header.algorithm not in ALGORITHMS:
        raise CalibrationError(f"calibration cache {path}: line 1: foreign header {first!r}:"
                               f" unknown calibrator, expected one of {list(ALGORITHMS)}")
    if not any(header.version in known for known in KNOWN_VERSIONS):
        raise CalibrationError(
            f"calibration cache {path}: line 1: header {first!r} has an unknown TensorRT "
            f"version {header.version}; expected 8xxx (TensorRT 8) or 10xxxx/11xxxx "
            f"(TensorRT 10/11, e.g. {DEFAULT_TRT_VERSION})")
    for number, (name, scale) in enumerate(scales.items(), start=2):
        if scale < FLOAT32_TINY:
            raise CalibrationError(
                f"calibration cache {path}: line {_line_of(path, name, number)}: tensor "
                f"{name!r} has a subnormal scale {scale:.3g} (below {FLOAT32_TINY:.3g}): "
                "its inverse overflows and TensorRT cannot use it")
        if scale * qmax > FLOAT32_MAX:
            raise CalibrationError(
                f"calibration cache {path}: line {_line_of(path, name, number)}: tensor "
                f"{name!r} has scale {scale:.3g}, whose {qmax:g}x overflows float32")
    return header


def _line_of(path: Path, name: str, fallback: int) -> int:
    """The 1-based line number of ``name``'s entry (blank lines counted)."""
    for number, line in enumerate(path.read_text("utf-8").split("\n"), start=1):
        if number > 1 and line.rpartition(":")[0] == name:
            return number
    return fallback


def check_cache_matches(path: str | Path, tensor_names: set[str],
                        model: str | Path = "the model") -> dict[str, float]:
    """Read a cache meant for a graph; every entry must name one of its tensors."""
    _, scales = read_calibration_cache(path)
    unknown = sorted(set(scales) - tensor_names)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5
                                          else "")
        raise CalibrationError(f"calibration cache {path}: {len(unknown)} of its "
                               f"{len(scales)} tensor(s) are not in {model}: {shown}; "
                               "expected the tensor names of this graph (was the cache "
                               "written for another model?)")
    return scales
