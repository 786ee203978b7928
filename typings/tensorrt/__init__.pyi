# Typed stub of the TensorRT Python API that trtflow calls itself (the build and run go
# through Polygraphy: typings/polygraphy returns these types, so mypy checks what trtflow
# does with them). Written from NVIDIA's TensorRT Python API reference; the comment
# above each class names its page, relative to
# https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/
# Every name here is checked against the API NVIDIA's sources bind
# (typings/tensorrt_api/tensorrt_python_api.json: TensorRT 10.16.1 and 11.1.0, extracted
# by typings/tensorrt_api/extract.py) by tests/unit/test_tensorrt_backend.py: a name marked
# "10.x only" must exist in 10.16.1 and not in 11.1.0, every other name in both; method
# parameters must be the keyword names the bindings declare.
# The `tensorrt-stubs` package cannot be used (DESIGN.md): it needs the tensorrt wheel,
# ships no py.typed and has syntax errors.
from typing import ClassVar

from typing_extensions import Buffer

__version__: str  # python/packaging/bindings_wheel/tensorrt/__init__.py (gettingStarted.html)

# infer/Core/Logger.html: ILogger and its Severity (values exported onto ILogger)
class ILogger:
    class Severity:
        INTERNAL_ERROR: ClassVar[ILogger.Severity]
        ERROR: ClassVar[ILogger.Severity]
        WARNING: ClassVar[ILogger.Severity]
        INFO: ClassVar[ILogger.Severity]
        VERBOSE: ClassVar[ILogger.Severity]
    WARNING: ClassVar[ILogger.Severity]

# infer/Core/Builder.html: trtflow tells a real TensorRT by `hasattr(tensorrt, "Builder")`
class Builder:
    def __init__(self, logger: ILogger) -> None: ...

# infer/Core/BuilderConfig.html: ProfilingVerbosity (DETAILED: the inspector names ONNX nodes)
class ProfilingVerbosity:
    LAYER_NAMES_ONLY: ClassVar[ProfilingVerbosity]
    DETAILED: ClassVar[ProfilingVerbosity]
    NONE: ClassVar[ProfilingVerbosity]

# infer/Core/BuilderConfig.html: MemoryPoolType (CreateConfig's memory_pool_limits keys)
class MemoryPoolType:
    WORKSPACE: ClassVar[MemoryPoolType]

# infer/Int8/Calibrator.html: IInt8Calibrator (removed in 11: no implicit INT8)
class IInt8Calibrator:  # 10.x only
    def get_batch_size(self) -> int: ...
    def get_batch(self, names: list[str]) -> list[int] | None: ...
    def read_calibration_cache(self) -> Buffer | None: ...
    def write_calibration_cache(self, cache: Buffer) -> None: ...

# infer/Int8/EntropyCalibrator2.html: IInt8EntropyCalibrator2 (Polygraphy's Calibrator base)
class IInt8EntropyCalibrator2(IInt8Calibrator):  # 10.x only
    def __init__(self) -> None: ...

# infer/Core/EngineInspector.html: LayerInformationFormat
class LayerInformationFormat:
    ONELINE: ClassVar[LayerInformationFormat]
    JSON: ClassVar[LayerInformationFormat]

# infer/Core/EngineInspector.html: the Python class is EngineInspector (C++ IEngineInspector)
class EngineInspector:
    def get_engine_information(self, format: LayerInformationFormat) -> str: ...
    def get_layer_information(self, layer_index: int, format: LayerInformationFormat) -> str: ...

# infer/Core/Engine.html: TensorIOMode
class TensorIOMode:
    NONE: ClassVar[TensorIOMode]
    INPUT: ClassVar[TensorIOMode]
    OUTPUT: ClassVar[TensorIOMode]

# infer/Core/Engine.html: ICudaEngine (name-based I/O tensor API of 10.x and 11.x)
class ICudaEngine:
    num_io_tensors: int
    num_layers: int
    def get_tensor_name(self, index: int) -> str: ...
    def get_tensor_mode(self, name: str) -> TensorIOMode: ...
    def create_engine_inspector(self) -> EngineInspector: ...
