"""`trtflow generate` (greedy text from a decoder engine) and `trtflow llm` (LlmCompiler:
every target of a decoder's params compiled and validated without Prefect or MLflow, as
bench/llm.py does; `trtflow run` is the path through the flow, MLflow and the registry).
Registered on the app when imported (trtflow/cli/__init__.py lists this module)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from trtflow.cli.app import ROOT_OPTION, app, console, fail, out
from trtflow.errors import TrtflowError


def _compiler(params_file: Path, root: Path):  # type: ignore[no-untyped-def]
    from trtflow.llm.compile import LlmCompiler
    from trtflow.llm.config import load_llm_params
    from trtflow.store import ArtifactStore

    params = load_llm_params(params_file)
    return params, LlmCompiler(params, root, ArtifactStore(root / ".trtflow" / "store"))


@app.command()
def generate(
    source: Annotated[Path, typer.Argument(help="a decoder's params file (params/smollm2.yaml) "
                                           "or an engine directory (a build artefact, or "
                                           "one `trtflow fetch` downloaded)")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="text to continue")],
    target: Annotated[str, typer.Option(help="the params file's target to run")] = "int4",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    chat: Annotated[bool, typer.Option(help="wrap the prompt in the tokenizer's chat "
                                       "template (instruction-tuned models)")] = False,
    threads: Annotated[int, typer.Option(min=1, help="intra-op threads")] = 2,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Greedy generation with a decoder engine and its KV cache; from params, the target's
    engine is found in the store or built through the decoder plan (export, calibrate,
    build: the same stages and keys as `trtflow run`)."""
    try:
        import numpy as np

        from trtflow.llm.generate import OrtDecoder, session_for

        engine_dir = source if source.is_dir() else _built_engine(source, target,
                                                                   root.resolve())
        tokenizer, shape = _decoder_files(engine_dir)
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True) \
            if chat else prompt
        ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)
        decoder = OrtDecoder(session_for(engine_dir / "engine.onnx", threads), shape)
        result = decoder.generate(ids[None], max_new_tokens, eos=tokenizer.eos_token_id)
    except TrtflowError as exc:
        fail(exc)
        return
    out.print(tokenizer.decode(result.tokens[0], skip_special_tokens=True), highlight=False)
    steps = max(len(result.step_seconds), 1)
    console.print(f"[dim]{engine_dir.name if source.is_dir() else target}: prefill {len(ids)} "
                  f"tokens {result.prefill_seconds:.3f} s, decode "
                  f"{steps / max(result.decode_seconds, 1e-9):.1f} tokens/s[/]")


def _built_engine(params_file: Path, target: str, root: Path) -> Path:
    """The build artefact of a decoder target (run up to build, cached stages reused)."""
    from trtflow.context import Context
    from trtflow.errors import ParamsError
    from trtflow.params import load_params
    from trtflow.plan import run_up_to

    params = load_params(params_file)
    if params.model.source.decoder is None:
        raise ParamsError(f"{params_file}: model.source.decoder is not set; `trtflow "
                          "generate` runs decoder engines")
    ctx = Context.create(params, root)
    ctx.target(target)  # an unknown target names the defined ones
    return Path(run_up_to(ctx, "build", target)[-1].path)


def _decoder_files(engine_dir: Path) -> tuple[Any, Any]:
    """The tokenizer and decoder shape the build stage put beside the engine."""
    from transformers import AutoTokenizer

    from trtflow.errors import ModelError
    from trtflow.llm.export import DecoderShape
    from trtflow.llm.stages import SHAPE_FILE, TOKENIZER_FOLDER

    folder = engine_dir / TOKENIZER_FOLDER
    if not (folder / SHAPE_FILE).is_file() or not (engine_dir / "engine.onnx").is_file():
        raise ModelError(f"{engine_dir}: not a decoder engine directory (expected engine.onnx "
                         f"and {TOKENIZER_FOLDER}/{SHAPE_FILE}, as the decoder plan's build "
                         "writes)")
    shape = DecoderShape(**json.loads((folder / SHAPE_FILE).read_text()))
    return AutoTokenizer.from_pretrained(str(folder)), shape


@app.command("llm")
def compile_llm(
    params_file: Annotated[Path, typer.Argument(help="an LLM params file (params/smollm2.yaml)")],
    speed: Annotated[bool, typer.Option(help="also measure prefill/decode tokens/s")] = True,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Compile and validate every target of a decoder's params without the flow (no MLflow,
    no registry; `trtflow run` does both); report in build/llm/NAME/report.json."""
    try:
        from trtflow.llm.validate import raise_on_gates, validate

        params, compiler = _compiler(params_file, root.resolve())
        report = validate(compiler, params.targets, measure_speed=speed,
                          progress=lambda line: console.print(f"  {line}"))
        path = root.resolve() / "build" / "llm" / params.model.name / "report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))
        console.print(f"  report: {path}")
        raise_on_gates(report)
    except TrtflowError as exc:
        fail(exc)
