# polygraphy/backend/trt: loaders (loader.py, config.py), Profile (profile.py),
# Calibrator (calibrator.py), TrtRunner (runner.py)
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
import tensorrt as trt

class ShapeTuple(NamedTuple):
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

class Profile:
    def __init__(self) -> None: ...
    def add(self, name: str, min: Sequence[int], opt: Sequence[int], max: Sequence[int]
            ) -> Profile: ...
    def __getitem__(self, key: str) -> ShapeTuple: ...

# config.py: CreateConfig(tf32, fp16, int8, fp8, bf16, calibrator, ..., **kwargs), the
# keyword arguments going to _CreateConfigCommon (profiles, load_timing_cache, ...)
class CreateConfig:
    tf32: bool
    fp16: bool
    int8: bool
    fp8: bool
    bf16: bool
    profiles: list[Profile]
    timing_cache_path: str | None
    def __init__(self, tf32: bool | None = None, fp16: bool | None = None,
                 int8: bool | None = None, fp8: bool | None = None,
                 bf16: bool | None = None, *,
                 calibrator: trt.IInt8Calibrator | None = None,
                 profiles: list[Profile] | None = None, load_timing_cache: str | None = None,
                 profiling_verbosity: trt.ProfilingVerbosity | None = None,
                 memory_pool_limits: Mapping[trt.MemoryPoolType, int] | None = None) -> None: ...

# loader.py: (builder, network, parser); trtflow never touches the network itself
class NetworkFromOnnxPath:
    def __init__(self, path: str, flags: Sequence[Any] | None = None,
                 plugin_instancenorm: bool | None = None,
                 strongly_typed: bool | None = None) -> None: ...
    def __call__(self) -> tuple[trt.Builder, Any, Any]: ...

class EngineFromNetwork:
    def __init__(self, network: NetworkFromOnnxPath | Callable[[], tuple[Any, ...]]
                 | tuple[Any, ...],
                 config: CreateConfig | None = None,
                 save_timing_cache: str | None = None) -> None: ...
    def __call__(self) -> trt.ICudaEngine: ...

class EngineFromBytes:
    def __init__(self, serialized_engine: bytes | Callable[[], bytes]) -> None: ...
    def __call__(self) -> trt.ICudaEngine: ...

class SaveEngine:
    def __init__(self, engine: trt.ICudaEngine | Callable[[], trt.ICudaEngine],
                 path: str) -> None: ...
    def __call__(self) -> trt.ICudaEngine: ...

# calibrator.py: a function returning an instance of a subclass of BaseClass
def Calibrator(data_loader: Iterable[Mapping[str, np.ndarray]], cache: str | None = None,
               BaseClass: type[trt.IInt8Calibrator] | None = None) -> trt.IInt8Calibrator: ...

class TrtRunner:
    engine: trt.ICudaEngine  # set by activate()
    def __init__(self, engine: trt.ICudaEngine | Callable[[], trt.ICudaEngine],
                 name: str | None = None) -> None: ...
    def activate(self) -> None: ...
    def deactivate(self) -> None: ...
    def infer(self, feed_dict: Mapping[str, np.ndarray], check_inputs: bool = True
              ) -> dict[str, np.ndarray]: ...
    def __enter__(self) -> TrtRunner: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc_value: BaseException | None,
                 traceback: TracebackType | None) -> None: ...
