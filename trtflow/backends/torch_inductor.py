"""AOTInductor: a `torch.export` program compiled ahead of time into a `.pt2` package.

The package (`engine.pt2`: generated C++/Triton kernels compiled into a shared
library, plus the weights) is the engine: it runs without the model's Python code,
from Python (`torch._inductor.aoti_load_package`) or C++ (`AOTIModelPackageLoader`).
Built on the device it runs on (`cpu`: g++ and OpenMP; `cuda`: Triton kernels for
the GPU in the key), so the torch version and the host's CPU/GPU are part of its key.

Precisions: fp32, bf16, fp16 (the whole module cast, as TensorRT's FP16 does; Inductor
keeps LayerNorm/Softmax reductions in fp32 internally). On CUDA, options:
  - `cuda_graph`: capture each input-shape profile in a CUDA graph at load and replay
    it (what makes torch.compile's reduce-overhead fast at batch 1);
  - `max_autotune`: Inductor benchmarks Triton GEMM/conv templates against cuBLAS at
    build time (minutes for a BERT; the package keeps the winners);
  - `fp8_linear`: Linear layers whose sizes allow it run `torch._scaled_mm` in
    FLOAT8_E4M3 with static per-tensor scales: activations from calibration amax
    (amax / 448), weights from their own amax. Measured on an H100 it pays little at
    BERT-base's size (1.05x at bs1), so it is a `best` candidate, not a default.
"""

from __future__ import annotations

import copy
import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from trtflow.backends import BackendOptions
from trtflow.errors import BuildError, DataError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from trtflow.params import Target
    from trtflow.quant.artifact import Calibration

PACKAGE_FILE = "engine.pt2"
CONFIG_FILE = "inductor.json"
PRECISIONS = ("fp32", "bf16", "fp16")
FP8_MAX = 448.0  # largest finite FLOAT8_E4M3FN value


class InductorOptions(BackendOptions):
    """`targets.NAME.options` of backend torch-inductor."""

    cuda_graph: bool = Field(default=True, description="cuda: capture each input-shape "
                             "profile in a CUDA graph at load and replay it")
    max_autotune: bool = Field(default=False, description="Inductor benchmarks Triton "
                               "GEMM/conv templates at build time (minutes for a BERT)")
    fp8_linear: bool = Field(default=False, description="cuda, fp16/bf16: Linear layers as "
                             "FP8 torch._scaled_mm with static calibrated scales (sm89+)")

    def ignored(self, precision: str) -> list[tuple[str, str]]:
        if self.fp8_linear and precision == "fp32":
            return [("fp8_linear", "FP8 Linear outputs fp16 or bf16, not fp32")]
        return []


def _options(target: Target) -> InductorOptions:
    options = target.options
    if not isinstance(options, InductorOptions):
        options = InductorOptions.model_validate(options.model_dump())
    return options


def torch_dtype(precision: str) -> torch.dtype:
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise BuildError(f"backend torch-inductor: precision '{precision}' is not one of "
                         f"{', '.join(PRECISIONS)}")
    return dtypes[precision]


# --- FP8 Linear with static scales ------------------------------------------------------


def fp8_supported(device: str) -> bool:
    """`torch._scaled_mm` needs an NVIDIA GPU of compute capability 8.9 or newer."""
    import torch

    return device == "cuda" and torch.cuda.is_available() and \
        torch.cuda.get_device_capability() >= (8, 9)


class Fp8Linear:
    """Factory for an nn.Module that runs one Linear as FP8 x FP8 -> out_dtype."""

    @staticmethod
    def make(linear: nn.Linear, input_amax: float, out_dtype: torch.dtype) -> nn.Module:
        import torch
        from torch import nn

        class _Fp8Linear(nn.Module):
            weight_fp8: torch.Tensor
            w_scale: torch.Tensor
            x_scale: torch.Tensor
            bias: torch.Tensor | None

            def __init__(self) -> None:
                super().__init__()
                weight = linear.weight.detach().float()
                w_scale = max(float(weight.abs().max()), 1e-12) / FP8_MAX
                x_scale = max(float(input_amax), 1e-12) / FP8_MAX
                fp8 = torch.float8_e4m3fn
                self.register_buffer("weight_fp8", (weight / w_scale).clamp(
                    -FP8_MAX, FP8_MAX).to(fp8))
                self.register_buffer("w_scale", torch.tensor(w_scale, dtype=torch.float32,
                                                             device=weight.device))
                self.register_buffer("x_scale", torch.tensor(x_scale, dtype=torch.float32,
                                                             device=weight.device))
                self.x_inv_scale = 1.0 / x_scale
                bias = linear.bias
                self.register_buffer("bias", None if bias is None else
                                     bias.detach().to(out_dtype))
                self.out_dtype = out_dtype

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                lead = x.shape[:-1]
                x2 = x.reshape(-1, x.shape[-1])
                xq = (x2.float() * self.x_inv_scale).clamp(-FP8_MAX, FP8_MAX).to(
                    torch.float8_e4m3fn)
                out = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=self.x_scale,
                                       scale_b=self.w_scale, bias=self.bias,
                                       out_dtype=self.out_dtype)
                return out.reshape(*lead, out.shape[-1])

        return _Fp8Linear()


def linear_input_amax(module: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]
                      ) -> dict[str, float]:
    """Max |input| of every nn.Linear over calibration batches (max calibration)."""
    import torch
    from torch import nn

    amax: dict[str, float] = {}
    hooks = []
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            def hook(_m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                value = float(args[0].detach().abs().max())
                amax[name] = max(amax.get(name, 0.0), value)
            hooks.append(sub.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            for batch in batches:
                module(*batch)
    finally:
        for h in hooks:
            h.remove()
    return amax


def quantize_linears_fp8(module: nn.Module, amax: dict[str, float], out_dtype: torch.dtype
                         ) -> list[str]:
    """Swap, in place, each Linear with calibrated input amax and K, N multiples of 16
    (`_scaled_mm`'s rule) for its FP8 form; returns the names swapped."""
    from torch import nn

    swapped = []
    for name, sub in list(module.named_modules()):
        if not isinstance(sub, nn.Linear) or name not in amax:
            continue
        if sub.in_features % 16 or sub.out_features % 16:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, Fp8Linear.make(sub, amax[name], out_dtype))
        swapped.append(name)
    return swapped


# --- build ------------------------------------------------------------------------------


def prepare_module(module: nn.Module, precision: str, device: str, fp8_amax:
                   dict[str, float] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of `module` on `device` in `precision`, FP8 Linears swapped in if asked."""
    dtype = torch_dtype(precision)
    prepared = copy.deepcopy(module).to(device=device, dtype=dtype).eval()
    report: dict[str, Any] = {"precision": precision}
    if fp8_amax is not None:
        if not fp8_supported(device):
            raise BuildError("fp8_linear needs an NVIDIA GPU of compute capability >= 8.9 "
                             "(torch._scaled_mm)")
        if precision == "fp32":
            raise BuildError("fp8_linear outputs fp16 or bf16: use precision fp16 or bf16")
        report["fp8_linear"] = quantize_linears_fp8(prepared, fp8_amax, dtype)
    return prepared, report


def _cast_inputs(example: tuple[torch.Tensor, ...], dtype: torch.dtype, device: str
                 ) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
                 for t in example)


def compile_package(module: nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str],
                    dynamic_axes: dict[str, dict[int, str]], precision: str, device: str,
                    out_dir: Path, options: InductorOptions | None = None,
                    fp8_amax: dict[str, float] | None = None) -> dict[str, Any]:
    """Export `module` and compile it with AOTInductor into `out_dir/engine.pt2`.

    `dynamic_axes`: input name -> {axis: dimension name}; axes sharing a name share one
    symbolic size. The example's dynamic sizes must be >= 2 (torch.export specializes 1).
    """
    import time

    import torch

    options = options or InductorOptions()
    if device == "cuda" and not torch.cuda.is_available():
        raise BuildError("backend torch-inductor on device cuda needs an NVIDIA GPU "
                         "(torch.cuda.is_available() is False here)")
    if options.fp8_linear and fp8_amax is None:
        raise BuildError("fp8_linear needs the calibrated input amax of the Linear layers")
    prepared, report = prepare_module(module, precision, device,
                                      fp8_amax if options.fp8_linear else None)
    args = _cast_inputs(example, torch_dtype(precision), device)
    dims: dict[str, Any] = {}
    shapes = tuple({axis: dims.setdefault(dim, torch.export.Dim(dim, min=1, max=1 << 16))
                    for axis, dim in dynamic_axes.get(name, {}).items()}
                   for name in input_names)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.export.export(prepared, args, dynamic_shapes=shapes)
    except Exception as exc:
        raise BuildError(f"torch.export failed for the torch-inductor backend: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:400]}") from None
    report["export_s"] = time.perf_counter() - start
    configs: dict[str, Any] = {}
    if options.max_autotune:
        configs.update(max_autotune=True)
    start = time.perf_counter()
    try:
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(out_dir / PACKAGE_FILE), inductor_configs=configs)
    except Exception as exc:
        raise BuildError(f"AOTInductor could not compile the program: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:400]}") from None
    report["compile_s"] = time.perf_counter() - start
    with torch.no_grad():
        outputs = prepared(*args)
    outputs = outputs if isinstance(outputs, tuple | list) else (outputs,)
    config = {
        "device": device, "precision": precision, "options": options.model_dump(),
        "inputs": [{"name": n, "dtype": str(t.dtype).removeprefix("torch."),
                    "dynamic_axes": {str(a): d for a, d in dynamic_axes.get(n, {}).items()}}
                   for n, t in zip(input_names, args, strict=True)],
        "outputs": len(outputs), "inductor_configs": configs,
        "torch": torch.__version__, "host": host_name(device),
    }
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    report.update(engine_file=PACKAGE_FILE, engine_bytes=(out_dir / PACKAGE_FILE).stat().st_size,
                  session=config)
    return report


def host_name(device: str) -> str:
    """The GPU's name on cuda; the CPU model on cpu (part of the engine's key)."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- run --------------------------------------------------------------------------------


class _GraphReplay:
    """One input-shape profile captured in a CUDA graph: copy in, replay, read out."""

    def __init__(self, runner: Any, inputs: tuple[torch.Tensor, ...]) -> None:
        import torch

        self.static_in = tuple(t.clone() for t in inputs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # first runs: constant folding, autotune caches, allocations
                runner(*self.static_in)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = runner(*self.static_in)

    def __call__(self, *inputs: torch.Tensor) -> Any:
        for dst, src in zip(self.static_in, inputs, strict=True):
            if dst.data_ptr() != src.data_ptr():
                dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.static_out


class InductorEngine:
    """A loaded `.pt2`: `run` takes/returns numpy; calling it takes/returns torch tensors."""

    def __init__(self, engine_dir: Path, cuda_graph: bool | None = None) -> None:
        import torch

        self.engine_dir = engine_dir
        try:
            self.config = json.loads((engine_dir / CONFIG_FILE).read_text())
        except FileNotFoundError:
            raise BuildError(f"{engine_dir} is not a torch-inductor engine ({CONFIG_FILE} is "
                             "missing)") from None
        self.device = self.config["device"]
        if self.device == "cuda" and not torch.cuda.is_available():
            raise BuildError(f"{engine_dir} was built for cuda; this machine has no GPU")
        self.runner = torch._inductor.aoti_load_package(str(engine_dir / PACKAGE_FILE))
        self.input_names = [i["name"] for i in self.config["inputs"]]
        self.output_names = [f"output_{i}" for i in range(self.config["outputs"])]
        self.dtypes = {i["name"]: getattr(torch, i["dtype"]) for i in self.config["inputs"]}
        wanted = self.config["options"].get("cuda_graph", True) if cuda_graph is None \
            else cuda_graph
        self.use_graph = bool(wanted) and self.device == "cuda"
        self.graphs: dict[tuple[tuple[int, ...], ...], _GraphReplay] = {}
        self.notes: list[str] = []

    def __call__(self, *inputs: torch.Tensor) -> Any:
        if not self.use_graph:
            return self.runner(*inputs)
        key = tuple(tuple(t.shape) for t in inputs)
        replay = self.graphs.get(key)
        if replay is None:
            try:
                replay = self.graphs[key] = _GraphReplay(self.runner, inputs)
            except Exception as exc:  # capture refused: run without a graph, say why
                self.use_graph = False
                self.notes.append(f"CUDA graph not captured: {str(exc).splitlines()[0][:200]}")
                return self.runner(*inputs)
        return replay(*inputs)

    def to_tensors(self, inputs: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
        import torch

        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise DataError(f"torch-inductor engine {self.engine_dir}: inputs {missing} "
                            f"missing (expects {self.input_names})")
        return tuple(torch.from_numpy(np.ascontiguousarray(inputs[n])).to(
            device=self.device, dtype=self.dtypes[n]) for n in self.input_names)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            out = self(*self.to_tensors(inputs))
            outs = out if isinstance(out, tuple | list) else (out,)
            return {n: o.detach().float().cpu().numpy()
                    for n, o in zip(self.output_names, outs, strict=True)}


# --- the backend ------------------------------------------------------------------------


class InductorBackend:
    """AOTInductor packages on cpu and cuda (the registry's `torch-inductor`)."""

    name = "torch-inductor"
    libraries = ("torch", "triton")
    precisions = PRECISIONS
    options = InductorOptions
    # `best` cannot time it until the build step hands it the torch.export program (the
    # plan passes the cleaned ONNX graph to every backend): see the module doc
    selectable = False
    consumes = "torch_program"

    def fingerprint(self, target: Target) -> dict[str, str]:
        import torch

        return {"torch": torch.__version__, "host": host_name(target.device)}

    def build(self, model_path: Path, target: Target, out_dir: Path,
              calibration: Calibration | None) -> dict[str, Any]:
        """`model_path`: a `torch.export` program (`.pt2` written by `torch.export.save`)."""
        import torch

        if model_path.suffix != ".pt2":
            raise BuildError(f"backend torch-inductor compiles a torch.export program (.pt2); "
                             f"got {model_path} (an ONNX graph cannot be compiled back)")
        try:
            program = torch.export.load(str(model_path))
        except Exception as exc:
            raise BuildError(f"{model_path}: not a torch.export program: "
                             f"{str(exc).splitlines()[0][:300]}") from None
        precision = "fp16" if target.precision == "best" and target.device == "cuda" \
            else ("fp32" if target.precision == "best" else target.precision)
        torch_dtype(precision)  # refuses int8/fp8 with a clear message
        example = tuple(program.example_inputs[0]) if program.example_inputs else ()
        names = [s.arg.name for s in program.graph_signature.input_specs
                 if s.kind.name == "USER_INPUT"]
        dynamic = _dynamic_axes(program, names)
        options = _options(target)
        if options.fp8_linear:
            # calibration.amax() is keyed by the ONNX graph's tensors; the Linear layers'
            # inputs among them are found through the exporter's name scopes, which the
            # build step does not hand a backend yet (bench/gpu.py calibrates in torch)
            raise BuildError("torch-inductor options.fp8_linear is not available through "
                             "the stage plan yet (the build step passes no torch program "
                             "and name scopes); use fp16 or bf16")
        return compile_package(program.module(), example, names, dynamic, precision,
                               target.device, out_dir, options)

    def load(self, engine_dir: Path, threads: int | None = None, spinning: bool = True
             ) -> InductorEngine:
        return InductorEngine(engine_dir)


def _dynamic_axes(program: Any, names: list[str]) -> dict[str, dict[int, str]]:
    """Input axes the exported program keeps symbolic, by the symbol's name."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    axes: dict[str, dict[int, str]] = {}
    for name in names:
        value = placeholders[name].meta.get("val")
        for axis, size in enumerate(getattr(value, "shape", ())):
            if not isinstance(size, int):
                axes.setdefault(name, {})[axis] = _identifier(str(size))
    return axes


def _identifier(name: str) -> str:
    ident = "".join(c if c.isalnum() else "_" for c in name)
    return ident if ident[:1].isalpha() else f"d_{ident}"


BACKEND = InductorBackend()
