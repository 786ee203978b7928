"""PyTorch eager FP32 on the GPU: the reference and latency baseline of a cuda target.

A GPU engine compared with eager on the CPU would show a meaningless speed-up;
validate compares it with the same model in eager mode on the same GPU, inputs
and outputs crossing the host the same way the engine's `run` does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from trtflow.errors import BuildError, ModelError
from trtflow.params import TensorSpec


def torch_cuda_runner(module: torch.nn.Module, specs: list[TensorSpec], output_names: list[str]
                      ) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
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
