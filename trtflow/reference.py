"""The FP32 reference a compiled engine is judged against, and its latency baseline.

PyTorch eager when the source is a torch model (on the GPU for a cuda target),
ONNX Runtime FP32 on the source graph when the source is ONNX-only; the label
says which, and the validation report carries it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from trtflow.context import Context

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def reference_runner(ctx: Context, threads: int, device: str = "cpu") -> tuple[Runner, str]:
    """(runner, label) of the FP32 reference for a target on `device`."""
    import torch

    torch.set_num_threads(threads)  # the eager baseline and the report use the same count
    model = ctx.model()
    if model.module is not None and device == "cuda":
        from trtflow.backends.gpu_reference import torch_cuda_runner

        return torch_cuda_runner(model.module, model.inputs, model.outputs), \
            "PyTorch eager FP32 on the GPU"
    if model.module is not None:
        from trtflow.stages.export import torch_outputs

        module, specs, names = model.module, model.inputs, model.outputs

        def run_torch(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return torch_outputs(module, specs, names, inputs)

        return run_torch, "PyTorch eager FP32"
    from trtflow.backends.onnxruntime_backend import OrtEngine

    assert model.onnx_path is not None
    return OrtEngine.from_model(model.onnx_path, threads).run, \
        "ONNX Runtime FP32 on the source graph (no PyTorch model)"
