# Typed stub of exactly the TensorRT Python API subset trtflow calls
# (trtflow/backends/tensorrt_backend.py), written from NVIDIA's TensorRT Python API
# reference. Each signature's comment names the reference page it follows, as
# "<section> > <page>" of https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/
# (10.x pages unless marked 11.x; the 10.x -> 11.x migration page lists what 11 removed:
# https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html).
# Members that exist only in 10.x are typed here too; the backend guards them with hasattr.
# The `tensorrt-stubs` package cannot be used (DESIGN.md): it needs the tensorrt wheel,
# ships no py.typed and has syntax errors.
from collections.abc import Iterator, Sequence
from typing import ClassVar

import numpy as np
from typing_extensions import Buffer

__version__: str  # Getting Started (tensorrt.__version__)

# Foundational Types > Dims: Dims(shape: Sequence[int]); iterable, len(), indexable
class Dims:
    def __init__(self, shape: Sequence[int] = ...) -> None: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> int: ...
    def __iter__(self) -> Iterator[int]: ...

# Foundational Types > DataType (enum)
class DataType:
    FLOAT: ClassVar[DataType]
    HALF: ClassVar[DataType]
    INT8: ClassVar[DataType]
    INT32: ClassVar[DataType]
    INT64: ClassVar[DataType]
    BOOL: ClassVar[DataType]

# Foundational Types > DataType: tensorrt.nptype(trt_type) -> numpy type
def nptype(trt_type: DataType) -> type[np.generic]: ...

# Foundational Types > IHostMemory: supports the buffer protocol; nbytes
class IHostMemory(Buffer):
    nbytes: int
    def __buffer__(self, flags: int, /) -> memoryview: ...

# Core > Logger: ILogger.Severity
class ILogger:
    class Severity:
        INTERNAL_ERROR: ClassVar[ILogger.Severity]
        ERROR: ClassVar[ILogger.Severity]
        WARNING: ClassVar[ILogger.Severity]
        INFO: ClassVar[ILogger.Severity]
        VERBOSE: ClassVar[ILogger.Severity]

# Core > Logger: Logger(min_severity=Logger.WARNING); Logger.WARNING etc. are ILogger.Severity
class Logger(ILogger):
    INTERNAL_ERROR: ClassVar[ILogger.Severity]
    ERROR: ClassVar[ILogger.Severity]
    WARNING: ClassVar[ILogger.Severity]
    INFO: ClassVar[ILogger.Severity]
    VERBOSE: ClassVar[ILogger.Severity]
    def __init__(self, min_severity: ILogger.Severity = ...) -> None: ...

# Graph > LayerBase > ITensor: name, shape, dtype
class ITensor:
    name: str
    shape: Dims
    dtype: DataType

# Graph > Network > INetworkDefinition: num_inputs, get_input(index)
class INetworkDefinition:
    num_inputs: int
    num_outputs: int
    def get_input(self, index: int) -> ITensor: ...
    def get_output(self, index: int) -> ITensor: ...

# Core > Builder > NetworkDefinitionCreationFlag (STRONGLY_TYPED: 10.x; 11.x is always strongly
# typed; EXPLICIT_BATCH is deprecated and ignored since 10.0)
class NetworkDefinitionCreationFlag:
    STRONGLY_TYPED: ClassVar[NetworkDefinitionCreationFlag]
    def __int__(self) -> int: ...

# Core > IBuilderConfig > BuilderFlag (FP16 and INT8 exist in 10.x only: removed in 11.x)
class BuilderFlag:
    FP16: ClassVar[BuilderFlag]
    INT8: ClassVar[BuilderFlag]
    TF32: ClassVar[BuilderFlag]

# Core > IBuilderConfig > MemoryPoolType
class MemoryPoolType:
    WORKSPACE: ClassVar[MemoryPoolType]

# Core > IBuilderConfig > ProfilingVerbosity
class ProfilingVerbosity:
    LAYER_NAMES_ONLY: ClassVar[ProfilingVerbosity]
    DETAILED: ClassVar[ProfilingVerbosity]
    NONE: ClassVar[ProfilingVerbosity]

# Core > ITimingCache: serialize() -> IHostMemory
class ITimingCache:
    def serialize(self) -> IHostMemory: ...

# Int8 > IInt8Calibrator (10.x only; removed in 11.x)
class IInt8Calibrator:
    def get_batch_size(self) -> int: ...
    def get_batch(self, names: list[str]) -> list[int] | None: ...
    def read_calibration_cache(self) -> Buffer | None: ...
    def write_calibration_cache(self, cache: memoryview) -> None: ...

# Int8 > IInt8EntropyCalibrator2 (10.x only): subclass it and call its __init__
class IInt8EntropyCalibrator2(IInt8Calibrator):
    def __init__(self) -> None: ...

# Core > IOptimizationProfile: set_shape(input, min, opt, max)
class IOptimizationProfile:
    def set_shape(self, input: str, min: Dims, opt: Dims, max: Dims) -> None: ...

# Core > IBuilderConfig
class IBuilderConfig:
    profiling_verbosity: ProfilingVerbosity
    int8_calibrator: IInt8Calibrator | None  # 10.x only; removed in 11.x
    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None: ...
    def set_flag(self, flag: BuilderFlag) -> None: ...
    def add_optimization_profile(self, profile: IOptimizationProfile) -> int: ...
    def create_timing_cache(self, serialized_timing_cache: Buffer) -> ITimingCache: ...
    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool: ...
    def get_timing_cache(self) -> ITimingCache: ...

# Core > Builder
class Builder:
    def __init__(self, logger: ILogger) -> None: ...
    def create_network(self, flags: int = 0) -> INetworkDefinition: ...
    def create_builder_config(self) -> IBuilderConfig: ...
    def create_optimization_profile(self) -> IOptimizationProfile: ...
    def build_serialized_network(self, network: INetworkDefinition,
                                 config: IBuilderConfig) -> IHostMemory | None: ...

# Parsers > Onnx Parser > IParserError
class IParserError:
    def code(self) -> int: ...
    def desc(self) -> str: ...
    def node(self) -> int: ...

# Parsers > Onnx Parser > OnnxParser(network, logger)
class OnnxParser:
    num_errors: int
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None: ...
    def parse_from_file(self, model: str) -> bool: ...
    def get_error(self, index: int) -> IParserError: ...

# Core > EngineInspector > LayerInformationFormat
class LayerInformationFormat:
    ONELINE: ClassVar[LayerInformationFormat]
    JSON: ClassVar[LayerInformationFormat]

# Core > EngineInspector: get_engine_information(format) -> str
class EngineInspector:
    def get_engine_information(self, format: LayerInformationFormat) -> str: ...
    def get_layer_information(self, layer_index: int, format: LayerInformationFormat) -> str: ...

# Core > ICudaEngine > TensorIOMode
class TensorIOMode:
    NONE: ClassVar[TensorIOMode]
    INPUT: ClassVar[TensorIOMode]
    OUTPUT: ClassVar[TensorIOMode]

# Core > IExecutionContext (name-based I/O; execute_async_v3 in 10.x and 11.x)
class IExecutionContext:
    def set_input_shape(self, name: str, shape: Dims) -> bool: ...
    def get_tensor_shape(self, name: str) -> Dims: ...
    def set_tensor_address(self, name: str, memory: int) -> bool: ...
    def execute_async_v3(self, stream_handle: int) -> bool: ...

# Core > ICudaEngine (name-based tensor API of 10.x/11.x)
class ICudaEngine:
    num_io_tensors: int
    num_layers: int
    def get_tensor_name(self, index: int) -> str: ...
    def get_tensor_mode(self, name: str) -> TensorIOMode: ...
    def get_tensor_dtype(self, name: str) -> DataType: ...
    def get_tensor_shape(self, name: str) -> Dims: ...
    def create_execution_context(self) -> IExecutionContext: ...
    def create_engine_inspector(self) -> EngineInspector: ...

# Core > Runtime: Runtime(logger).deserialize_cuda_engine(serialized_engine)
class Runtime:
    def __init__(self, logger: ILogger) -> None: ...
    def deserialize_cuda_engine(self, serialized_engine: Buffer) -> ICudaEngine | None: ...
