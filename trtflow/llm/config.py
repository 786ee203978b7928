"""The settings of `LlmCompiler` (trtflow/llm/compile.py: `trtflow llm`, bench/llm.py),
read from a params file with a `model.source.decoder` (params/smollm2.yaml, the schema
of trtflow/params.py) or from the older flat LLM form (`model.source: PATH`, `task:
text-generation`) that this module's `LlmParams` still describes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trtflow.errors import ParamsError
from trtflow.params import FineTune, Params, WeightOnly, matmulnbits_block, parse_params
from trtflow.yamlfile import load_yaml

__all__ = ["FineTune", "LlmParams", "LlmTarget", "load_llm_params", "from_params"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LlmModel(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    source: str = Field(description="'smollm2', a .gguf file or a Hugging Face causal-LM "
                        "folder (relative to the project root)")
    finetune: FineTune | None = None


class LlmData(Strict):
    calibration: Path = Path("data/llm/calibration.txt")
    evaluation: Path = Path("data/llm/evaluation.txt")


class Calibration(Strict):
    windows: int = Field(default=8, ge=1, description="calibration windows run through the model")
    window: int = Field(default=256, ge=8)
    rows: int = Field(default=512, ge=16, description="activation rows sampled per projection")
    seed: int = 0


class Evaluation(Strict):
    windows: int = Field(default=16, ge=1, description="evaluation windows scored for perplexity")
    window: int = Field(default=256, ge=8)
    prompt_tokens: int = Field(default=128, ge=1)
    new_tokens: int = Field(default=128, ge=2)
    agreement_tokens: int = Field(default=32, ge=2)
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 4])
    repeats: int = Field(default=3, ge=1)
    threads: int = Field(default=2, ge=1)


class Gates(Strict):
    max_perplexity_increase: float | None = Field(default=None, ge=0, description="relative, "
                                                  "vs the FP32 engine (0.03 = 3 %)")
    min_greedy_agreement: float | None = Field(default=None, ge=0, le=1)


class LlmTarget(Strict):
    precision: Literal["fp32", "int8", "int4"]
    group_size: int = 32
    symmetric: bool = False
    method: Literal["rtn", "awq", "gptq", "awq+gptq"] = "awq"
    lm_head_bits: Literal[8] | None = 8
    lm_head_group_size: int = 64
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4
    gates: Gates = Field(default_factory=Gates)

    @field_validator("group_size", "lm_head_group_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        return matmulnbits_block(value)


class LlmParams(Strict):
    task: Literal["text-generation"] = "text-generation"
    model: LlmModel
    data: LlmData = Field(default_factory=LlmData)
    calibration: Calibration = Field(default_factory=Calibration)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    targets: dict[str, LlmTarget]


def from_params(params: Params) -> LlmParams:
    """The LlmCompiler settings of a decoder's params (trtflow/params.py)."""
    src, data = params.model.source, params.data
    if src.decoder is None or data.calibration is None or data.evaluation is None:
        raise ParamsError(f"model {params.model.name}: not a decoder (model.source.decoder)")
    v = params.validate_.decoder
    targets = {}
    for name, t in params.targets.items():
        wo, g = t.weight_only or WeightOnly(), t.gates or params.validate_.gates
        targets[name] = LlmTarget(
            precision=t.precision, group_size=wo.group_size,  # type: ignore[arg-type]
            symmetric=wo.symmetric, method=wo.method, lm_head_bits=wo.lm_head_bits,
            lm_head_group_size=wo.lm_head_group_size, accuracy_level=wo.accuracy_level,
            gates=Gates(max_perplexity_increase=g.max_perplexity_increase,
                        min_greedy_agreement=g.min_greedy_agreement))
    threads = next((t.threads for t in params.targets.values() if t.threads), 2)
    return LlmParams(
        model=LlmModel(name=params.model.name, source=src.decoder, finetune=src.finetune),
        data=LlmData(calibration=Path(str(data.calibration.text)),
                     evaluation=Path(str(data.evaluation.text))),
        calibration=Calibration(**params.calibration.decoder.model_dump()),
        evaluation=Evaluation(windows=v.windows, window=v.window, prompt_tokens=v.prompt_tokens,
                              new_tokens=v.new_tokens, agreement_tokens=v.agreement_tokens,
                              batch_sizes=params.validate_.batch_sizes, repeats=v.repeats,
                              threads=threads),
        targets=targets)


def load_llm_params(path: Path) -> LlmParams:
    """Read and validate an LLM params file, in either form; ParamsError names the file
    and field."""
    data = load_yaml(Path(path))
    model = data.get("model") if isinstance(data, dict) else None
    if isinstance(model, dict) and isinstance(model.get("source"), dict):
        return from_params(parse_params(data, str(path)))
    try:
        return LlmParams.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ParamsError(f"{path}: field {where}: {first['msg']}") from None
