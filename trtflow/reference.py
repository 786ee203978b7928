"""The FP32 reference a compiled engine is judged against, and its latency baseline.

PyTorch eager when the source is a torch model (on the GPU for a cuda target),
ONNX Runtime FP32 on the source graph when the source is ONNX-only; the label
says which, and the validation report carries it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from trtflow.context import Context
from trtflow.errors import BuildError, ModelError

if TYPE_CHECKING:
    import torch

    from trtflow.params import TensorSpec

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def reference_runner(ctx: Context, threads: int, device: str = "cpu") -> tuple[Runner, str]:
    """(runner, label) of the FP32 reference for a target on `device`."""
    import torch

    torch.set_num_threads(threads)  # the eager baseline and the report use the same count
    model = ctx.model()
    if model.module is not None and device == "cuda":
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


def torch_cuda_runner(module: torch.nn.Module, specs: list[TensorSpec], output_names: list[str]
                      ) -> Runner:
    """PyTorch eager FP32 on the GPU: the reference and latency baseline of a cuda target.
    A GPU engine compared with eager on the CPU would show a meaningless speed-up, so it is
    compared with the same model on the same GPU, inputs and outputs crossing the host the
    same way the engine's `run` does."""
    import torch

    if not torch.cuda.is_available():
        raise BuildError("a device: cuda target needs PyTorch with CUDA for its eager "
                         "reference; torch.cuda.is_available() is False here")
    gpu = copy.deepcopy(module).to("cuda").eval()  # the CPU module stays for other targets

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(inputs[s.name])).to("cuda")
                    for s in specs]
            out = gpu(*args)
        outs = out if isinstance(out, tuple | list) else (out,)
        if len(outs) != len(output_names):
            raise ModelError(f"the model returned {len(outs)} outputs, params name "
                             f"{len(output_names)} ({output_names})")
        return {n: o.detach().float().cpu().numpy()
                for n, o in zip(output_names, outs, strict=True)}

    return run
