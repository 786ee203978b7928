# polygraphy/backend/onnxrt/runner.py
from collections.abc import Callable, Mapping
from types import TracebackType

import numpy as np
import onnxruntime

class OnnxrtRunner:
    def __init__(self, sess: onnxruntime.InferenceSession
                 | Callable[[], onnxruntime.InferenceSession], name: str | None = None) -> None: ...
    def infer(self, feed_dict: Mapping[str, np.ndarray], check_inputs: bool = True
              ) -> dict[str, np.ndarray]: ...
    def __enter__(self) -> OnnxrtRunner: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc_value: BaseException | None,
                 traceback: TracebackType | None) -> None: ...
