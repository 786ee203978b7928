"""The decoder plan: the steps a `model.source.decoder` compiles through.

    export -> calibrate[target] -> build[target] -> validate[target]

The same stage names as the five-stage plan (trtflow/plan.py), the same `Step`
declarations, keys and store, so the Prefect flow, `trtflow stage`/`publish`, MLflow
logging and the registry handle a decoder's results as any other model's:

- **export**: load the source (GGUF or Hugging Face folder; optional seeded fine-tune),
  save it as a Hugging Face folder (`hf/`: later stages load it in seconds), write the
  KV-cache graph (`model.onnx`) and check its parity with transformers' logits.
- **calibrate** (per target, int8/int4): weight-only codes, scales and zero points
  (`weight_only.npz`, `weight_only.json`): the decoder's calibration kind. RTN reads no
  data; AWQ reads the calibration text. Targets with equal settings share one artefact.
- **build** (per target): the ONNX Runtime engine: the KV-cache graph itself for fp32,
  each quantized projection as `MatMulNBits` otherwise; an `onnxruntime-cpu` engine
  directory (`engine.json`, `session.json`) that `load_engine` and the MLflow pyfunc run,
  with the tokenizer beside it (`decoder/`) for generation from a fetched engine.
- **validate** (per target): trtflow/llm/validate.py: perplexity, agreement, tokens/s.

No cleanup stage: the exporter folds constants itself, and the build rewrites the
graph's MatMuls by their initializer names, which a cleanup pass would be free to change.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from trtflow.context import Context, data_digest
from trtflow.params import WEIGHT_ONLY, Target, WeightOnly, project_path
from trtflow.stage import StageResult, Step, Upstream

VERSION = "decoder-1"
HF_FOLDER = "hf"  # the float model and tokenizer, as a Hugging Face folder
GRAPH_FILE = "model.onnx"
PARITY_FILE = "parity.json"
ENGINE_FILE = "engine.onnx"
TOKENIZER_FOLDER = "decoder"  # beside the engine: tokenizer, config, shape
SHAPE_FILE = "decoder.json"


def weight_only_quantized(target: Target) -> bool:
    """int8/int4 decoder targets: their weights are quantized by the calibrate stage."""
    return target.precision in WEIGHT_ONLY


def weight_only(target: Target) -> WeightOnly:
    return target.weight_only or WeightOnly()


def text_path(ctx: Context, split: str) -> Path:
    source = getattr(ctx.params.data, split)
    return project_path(str(source.text), ctx.root, f"data.{split}.text")


def _say(ctx: Context, message: str) -> None:
    if ctx.progress:
        ctx.progress(message)


def _quiet_transformers() -> None:
    """No tqdm bars from transformers' loaders inside a stage: its progress is the
    stage's own messages (the CLI's progress line)."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def float_model(export: StageResult) -> tuple[Any, Any]:
    """The float LlamaForCausalLM and tokenizer the export stage saved."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    _quiet_transformers()
    folder = str(export.file(HF_FOLDER))
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def tokenizer_of(export: StageResult) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(export.file(HF_FOLDER)))


def shape_of(export: StageResult) -> Any:
    from trtflow.llm.export import DecoderShape

    return DecoderShape(**export.report["shape"])


# --- export ------------------------------------------------------------------------

def _export_facts(ctx: Context, target: str | None) -> dict[str, Any]:
    from trtflow.llm.fused_graph import GRAPH_VERSION

    # the graph's layout (fused attention) is this step's code: a new layout, a new key
    parts: dict[str, Any] = {"source": ctx.source_digest(), "graph": GRAPH_VERSION}
    if ctx.params.model.source.finetune is not None:  # it trains on the calibration text
        parts["finetune_text"] = data_digest(ctx.root, ctx.params.data.calibration)  # type: ignore[arg-type]
    return parts


def run_export(ctx: Context, target: str | None, out: Path) -> dict[str, Any]:
    from trtflow.llm.export import DecoderShape, check_parity, hf_weights
    from trtflow.llm.generate import session_for
    from trtflow.llm.ort_engine import float_graph
    from trtflow.llm.source import decoder_path, load_decoder

    src = ctx.params.model.source
    path = decoder_path(str(src.decoder), ctx.root)
    _quiet_transformers()
    _say(ctx, f"loading {path.name} as a float causal LM")
    loaded = load_decoder("smollm2" if src.decoder == "smollm2" else path)
    report: dict[str, Any] = {"source": str(src.decoder), "gguf_grid": loaded.gguf_grid}
    if src.finetune is not None:
        from trtflow.llm.data import read_text
        from trtflow.llm.finetune import finetune
        from trtflow.llm.quantize import token_windows

        _say(ctx, f"fine-tuning {src.finetune.steps} steps on the calibration text")
        windows = token_windows(loaded.tokenizer, read_text(text_path(ctx, "calibration")),
                                src.finetune.window)
        report["finetune"] = finetune(loaded.model, windows, src.finetune)  # type: ignore[arg-type]
    loaded.model.save_pretrained(str(out / HF_FOLDER))
    loaded.tokenizer.save_pretrained(str(out / HF_FOLDER))
    shape = DecoderShape.from_config(loaded.model.config)
    _say(ctx, f"exporting the KV-cache graph ({shape.layers} layers)")
    weights = {k: v.numpy() for k, v in hf_weights(loaded.model).items()}
    graph = float_graph(weights, shape, out / GRAPH_FILE)
    ids = np.random.default_rng(0).integers(0, shape.vocab, (2, 24))
    parity = check_parity(session_for(graph), loaded.model, ids, 16, shape)
    report.update(shape=shape.as_dict(), parity={"prefill": 16, "decode_steps": 8, **parity})
    (out / PARITY_FILE).write_text(json.dumps(report["parity"], indent=1))
    return report


EXPORT = Step(
    "export", VERSION, run_export,
    reads=("model",),
    libraries=("torch", "transformers", "gguf", "onnx", "onnxruntime", "numpy"),
    facts=_export_facts,
)


# --- calibrate: weight-only scales -------------------------------------------------

def _calibrate_facts(ctx: Context, target: str | None) -> dict[str, Any]:
    spec = ctx.target(str(target))
    settings = weight_only(spec)
    parts: dict[str, Any] = {"bits": bits_of(spec),
                             "weight_only": settings.model_dump(exclude={"accuracy_level"})}
    if settings.method != "rtn":  # RTN reads no data
        parts["calibration"] = ctx.params.calibration.decoder.model_dump()
        parts["calibration_data"] = data_digest(ctx.root, ctx.params.data.calibration)  # type: ignore[arg-type]
    return parts


def bits_of(target: Target) -> int:
    return 4 if target.precision == "int4" else 8


def run_calibrate(ctx: Context, target: str | None, out: Path, export: StageResult
                  ) -> dict[str, Any]:
    from trtflow.llm.data import read_text
    from trtflow.llm.export import hf_weights
    from trtflow.llm.quantize import (
        capture_inputs,
        quantize_decoder,
        save_quantized,
        token_windows,
    )
    from trtflow.llm.weight_only import WeightOnlyConfig, check_group

    spec = ctx.target(str(target))
    settings = weight_only(spec)
    cfg = WeightOnlyConfig(bits=bits_of(spec), group_size=settings.group_size,  # type: ignore[arg-type]
                           symmetric=settings.symmetric, method=settings.method,
                           lm_head_bits=settings.lm_head_bits,
                           lm_head_group_size=settings.lm_head_group_size,
                           int8_projections=tuple(settings.int8_projections),
                           int8_group_size=settings.int8_group_size)
    shape = shape_of(export)
    for rows, what in ((shape.hidden, "hidden size"), (shape.intermediate, "intermediate size")):
        check_group(f"targets.{target}.weight_only: the model's {what}", rows, cfg.group_size)
    start = time.perf_counter()
    model, tokenizer = float_model(export)
    inputs = None
    if cfg.method != "rtn":  # AWQ's scales and GPTQ's Hessians read the calibration text
        c = ctx.params.calibration.decoder
        _say(ctx, f"{cfg.method.upper()}: activations of {c.windows} calibration windows")
        windows = token_windows(tokenizer, read_text(text_path(ctx, "calibration")), c.window,
                                c.windows)
        inputs = capture_inputs(model, windows, c.rows, c.seed)
    _say(ctx, f"weight-only INT{cfg.bits} ({cfg.method}, group {cfg.group_size})")
    quantized = quantize_decoder({k: v.numpy() for k, v in hf_weights(model).items()}, shape,
                                 cfg, inputs)
    save_quantized(quantized, out)
    return {"method": f"weight-only {cfg.method}", "bits": cfg.bits,
            "group_size": cfg.group_size, "symmetric": cfg.symmetric,
            "lm_head_bits": cfg.lm_head_bits, "tensors": len(quantized.weights),
            "collect_seconds": time.perf_counter() - start}


CALIBRATE = Step(
    "calibrate", VERSION, run_calibrate,
    inputs=(Upstream("export"),),
    libraries=("numpy", "torch", "transformers"),
    facts=_calibrate_facts,
    per_target=True,
)


# --- build -------------------------------------------------------------------------

def _build_facts(ctx: Context, target: str | None) -> dict[str, Any]:
    spec = ctx.target(str(target))
    return {"precision": spec.precision, "threads": spec.threads,
            "accuracy_level": weight_only(spec).accuracy_level
            if weight_only_quantized(spec) else None}


def run_build(ctx: Context, target: str | None, out: Path, export: StageResult,
              calibration: StageResult | None = None) -> dict[str, Any]:
    from trtflow.backends import MANIFEST_FILE
    from trtflow.backends.onnxruntime_backend import CONFIG_FILE

    spec = ctx.target(str(target))
    engine = out / ENGINE_FILE
    if calibration is None:  # fp32: the KV-cache graph is the engine
        _link_or_copy(export.file(GRAPH_FILE), engine)
    else:
        from trtflow.llm.ort_engine import matmulnbits_graph
        from trtflow.llm.quantize import load_quantized

        _say(ctx, "MatMulNBits engine")
        matmulnbits_graph(export.file(GRAPH_FILE), load_quantized(Path(calibration.path)),
                          engine, weight_only(spec).accuracy_level)
    # an onnxruntime-cpu engine directory: `load_engine` and the MLflow pyfunc run it
    (out / CONFIG_FILE).write_text(json.dumps({
        "providers": ["CPUExecutionProvider"], "optimization": "all",
        "intra_op_threads": spec.threads, "config_entries": {}}, indent=2))
    (out / MANIFEST_FILE).write_text(json.dumps(
        {"backend": "onnxruntime-cpu", "target": spec.model_dump(mode="json")}, indent=2))
    tokenizer = out / TOKENIZER_FOLDER
    tokenizer.mkdir()
    for path in export.file(HF_FOLDER).iterdir():  # everything but the float weights
        if path.is_file() and not path.name.endswith((".safetensors", ".bin")):
            shutil.copy2(path, tokenizer / path.name)
    (tokenizer / SHAPE_FILE).write_text(json.dumps(export.report["shape"], indent=1))
    return {"backend": "onnxruntime-cpu", "engine_file": ENGINE_FILE,
            "engine_bytes": engine.stat().st_size, "precision": spec.precision,
            "weight_only": weight_only(spec).model_dump() if calibration else None}


def _link_or_copy(source: Path, dest: Path) -> None:
    """A hard link where the store's filesystem allows (the fp32 graph is hundreds of MB;
    store artefacts are never written after they are stored), else a copy."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


BUILD = Step(
    "build", VERSION, run_build,
    inputs=(Upstream("export"), Upstream("calibrate", when=weight_only_quantized)),
    libraries=("onnx", "onnx-ir", "onnxruntime"),
    facts=_build_facts,
    per_target=True,
)


# --- validate ----------------------------------------------------------------------

def _validate_facts(ctx: Context, target: str | None) -> dict[str, Any]:
    from trtflow.latency import host_fingerprint
    from trtflow.ort_session import default_threads

    parts: dict[str, Any] = {
        "host": host_fingerprint(),  # tokens/s are a measurement of this machine
        "threads": ctx.target(str(target)).threads or default_threads(),
        "decoder": ctx.params.validate_.decoder.model_dump(),
        "evaluation_data": data_digest(ctx.root, ctx.params.data.evaluation),  # type: ignore[arg-type]
    }
    if ctx.remeasure:
        parts["remeasure"] = time.time_ns()
    return parts


def run_validate(ctx: Context, target: str | None, out: Path, build: StageResult,
                 export: StageResult) -> dict[str, Any]:
    from trtflow.llm.data import read_text
    from trtflow.llm.validate import validate_engine
    from trtflow.ort_session import default_threads

    name = str(target)
    spec = ctx.target(name)
    gates = spec.gates or ctx.params.validate_.gates
    text_file = text_path(ctx, "evaluation")
    report = validate_engine(
        engine=build.file(ENGINE_FILE), reference=export.file(GRAPH_FILE),
        shape=shape_of(export), tokenizer=tokenizer_of(export), text=read_text(text_file),
        text_file=text_file, settings=ctx.params.validate_.decoder,
        batch_sizes=ctx.params.validate_.batch_sizes, gates=gates, target=name,
        threads=spec.threads or default_threads(), out_dir=out,
        reference_is_engine=not weight_only_quantized(spec),
        progress=lambda line: _say(ctx, line))
    return report.as_dict()


VALIDATE = Step(
    "validate", VERSION, run_validate,
    inputs=(Upstream("build"), Upstream("export")),
    reads=("validate.batch_sizes", "validate.gates", "targets.{target}"),
    libraries=("onnxruntime", "transformers", "numpy"),
    facts=_validate_facts,
    per_target=True,
)

STEPS: dict[str, Step] = {s.name: s for s in (EXPORT, CALIBRATE, BUILD, VALIDATE)}
