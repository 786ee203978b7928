"""The decoder path through trtflow's stages, each output a store artefact keyed by its
inputs: source (float weights + tokenizer, after the optional fine-tune), export (the
KV-cache graph + parity), calibrate (weight-only codes and scales per target), build
(the ORT engine per target), then validate (perplexity, agreement, tokens/s).

Inputs are checked before anything is written: a bad file fails with its name and
leaves the store as it was.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from trtflow.llm.config import LlmParams, LlmTarget
from trtflow.llm.data import read_text
from trtflow.llm.export import DecoderShape, hf_weights
from trtflow.store import ArtifactStore, file_digest, make_key

VERSION = "1"


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {"torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__}


def source_path(params: LlmParams, root: Path) -> Path:
    from trtflow.llm.source import smollm2_gguf_path

    src = params.model.source
    return smollm2_gguf_path() if src == "smollm2" else (root / src)


def source_digest(path: Path) -> str:
    if path.is_file():
        return file_digest(path)
    return make_key("folder", VERSION, **{p.name: file_digest(p) for p in sorted(path.iterdir())
                                          if p.is_file()})


class LlmCompiler:
    """One params file's artefacts in one store; each method returns a store folder."""

    def __init__(self, params: LlmParams, root: Path, store: ArtifactStore) -> None:
        self.params, self.root, self.store = params, root, store
        self.versions = library_versions()
        self.calibration_text = read_text(root / params.data.calibration)
        self.evaluation_text = read_text(root / params.data.evaluation)
        self._model: Any = None
        self._tokenizer: Any = None

    # -- source ---------------------------------------------------------------------
    def source(self) -> Path:
        path = source_path(self.params, self.root)
        finetune = self.params.model.finetune
        key = make_key("llm-source", VERSION, source=source_digest(path) if path.exists()
                       else str(path), finetune=finetune.model_dump() if finetune else None,
                       text=make_key("t", "1", t=self.calibration_text) if finetune else None,
                       **self.versions)
        art = self.store.get("llm-source", key)
        if art is not None:
            return art.path
        from trtflow.llm.source import load_decoder

        loaded = load_decoder(path if self.params.model.source != "smollm2" else "smollm2")
        meta: dict[str, Any] = {"source": str(path), "gguf_grid": loaded.gguf_grid}
        if finetune:
            from trtflow.llm.finetune import finetune as run_finetune
            from trtflow.llm.quantize import token_windows

            windows = token_windows(loaded.tokenizer, self.calibration_text, finetune.window)
            meta["finetune"] = run_finetune(loaded.model, windows, finetune)
        with self.store.writer("llm-source", key, meta) as tmp:
            loaded.model.save_pretrained(str(tmp))
            loaded.tokenizer.save_pretrained(str(tmp))
            (tmp / "source.json").write_text(json.dumps(meta, indent=1))
        art = self.store.get("llm-source", key)
        assert art is not None
        return art.path

    def model(self) -> tuple[Any, Any]:
        if self._model is None:
            import torch
            from transformers import AutoTokenizer, LlamaForCausalLM

            folder = self.source()
            self._model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32
                                                           ).eval()
            self._tokenizer = AutoTokenizer.from_pretrained(str(folder))
        return self._model, self._tokenizer

    def shape(self) -> DecoderShape:
        return DecoderShape.from_config(self.model()[0].config)

    def float_weights(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in hf_weights(self.model()[0]).items()}

    # -- export ---------------------------------------------------------------------
    def export(self) -> Path:
        src = self.source()
        from trtflow.llm.fused_graph import GRAPH_VERSION

        key = make_key("llm-export", VERSION, source=src.name, graph=GRAPH_VERSION,
                       **self.versions)
        art = self.store.get("llm-export", key)
        if art is not None:
            return art.path
        from trtflow.llm.export import check_parity
        from trtflow.llm.generate import session_for
        from trtflow.llm.ort_engine import float_graph

        model, _ = self.model()
        shape = self.shape()
        with self.store.writer("llm-export", key, {"source": src.name}) as tmp:
            graph = float_graph(self.float_weights(), shape, tmp / "model.onnx")
            ids = np.random.default_rng(0).integers(0, shape.vocab, (2, 24))
            parity = check_parity(session_for(graph), model, ids, 16, shape)
            (tmp / "parity.json").write_text(json.dumps(
                {"prefill": 16, "decode_steps": 8, **parity, "shape": shape.as_dict()}, indent=1))
        art = self.store.get("llm-export", key)
        assert art is not None
        return art.path

    # -- calibrate ------------------------------------------------------------------
    def weight_only_config(self, target: LlmTarget) -> Any:
        from trtflow.llm.weight_only import WeightOnlyConfig

        bits = 4 if target.precision == "int4" else 8
        return WeightOnlyConfig(bits=bits, group_size=target.group_size,  # type: ignore[arg-type]
                                symmetric=target.symmetric, method=target.method,
                                lm_head_bits=target.lm_head_bits,
                                lm_head_group_size=target.lm_head_group_size)

    def calibrate(self, target: LlmTarget) -> Path:
        from trtflow.llm.weight_only import check_group

        cfg = self.weight_only_config(target)
        shape = self.shape()
        for rows, what in ((shape.hidden, "hidden size"), (shape.intermediate,
                                                             "intermediate size")):
            check_group(f"the model's {what}", rows, cfg.group_size)
        src = self.source()
        c = self.params.calibration
        key = make_key("llm-calibrate", VERSION, source=src.name, config=asdict(cfg),
                       calibration=c.model_dump(), text=make_key("t", "1",
                                                                 t=self.calibration_text))
        art = self.store.get("llm-calibrate", key)
        if art is not None:
            return art.path
        from trtflow.llm.quantize import (
            capture_inputs,
            quantize_decoder,
            save_quantized,
            token_windows,
        )

        model, tokenizer = self.model()
        inputs = None
        if cfg.method != "rtn":
            windows = token_windows(tokenizer, self.calibration_text, c.window, c.windows)
            inputs = capture_inputs(model, windows, c.rows, c.seed)
        q = quantize_decoder(self.float_weights(), shape, cfg, inputs)
        with self.store.writer("llm-calibrate", key, {"config": asdict(cfg)}) as tmp:
            save_quantized(q, tmp)
        art = self.store.get("llm-calibrate", key)
        assert art is not None
        return art.path

    # -- build ----------------------------------------------------------------------
    def build(self, target: LlmTarget) -> Path:
        exported = self.export() / "model.onnx"
        if target.precision == "fp32":
            return exported
        calibration = self.calibrate(target)
        key = make_key("llm-build", VERSION, export=exported.parent.name,
                       calibration=calibration.name, accuracy_level=target.accuracy_level,
                       **self.versions)
        art = self.store.get("llm-build", key)
        if art is not None:
            return art.file("engine.onnx")
        from trtflow.llm.ort_engine import matmulnbits_graph
        from trtflow.llm.quantize import load_quantized

        q = load_quantized(calibration)
        with self.store.writer("llm-build", key, {"precision": target.precision}) as tmp:
            matmulnbits_graph(exported, q, tmp / "engine.onnx", target.accuracy_level)
        art = self.store.get("llm-build", key)
        assert art is not None
        return art.file("engine.onnx")


def host() -> dict[str, Any]:
    flags: list[str] = []
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = [f for f in line.split(":", 1)[1].split()
                         if f.startswith(("avx", "amx", "fma", "f16c", "sse4"))]
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import os

    return {"cpu": model, "cpu_flags": sorted(set(flags)), "cores": os.cpu_count()}
