"""`trtflow generate` (greedy text from a compiled decoder engine) and `trtflow llm`
(compile and validate every target of an LLM params file). Registered on the app when
imported (trtflow/cli/__init__.py lists this module)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

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
    params_file: Annotated[Path, typer.Argument(help="an LLM params file (params/smollm2.yaml)")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="text to continue")],
    target: Annotated[str, typer.Option(help="the params file's target to run")] = "int4",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    chat: Annotated[bool, typer.Option(help="wrap the prompt in the tokenizer's chat "
                                       "template (instruction-tuned models)")] = False,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Greedy generation with the KV-cache engine of one target (built if missing)."""
    try:
        import numpy as np

        from trtflow.errors import ParamsError
        from trtflow.llm.generate import OrtDecoder, session_for

        params, compiler = _compiler(params_file, root.resolve())
        if target not in params.targets:
            raise ParamsError(f"{params_file}: no target {target!r}; targets: "
                              f"{sorted(params.targets)}")
        engine = compiler.build(params.targets[target])
        _, tokenizer = compiler.model()
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True) \
            if chat else prompt
        ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)
        decoder = OrtDecoder(session_for(engine, params.evaluation.threads), compiler.shape())
        result = decoder.generate(ids[None], max_new_tokens, eos=tokenizer.eos_token_id)
    except TrtflowError as exc:
        fail(exc)
        return
    out.print(tokenizer.decode(result.tokens[0], skip_special_tokens=True), highlight=False)
    steps = max(len(result.step_seconds), 1)
    console.print(f"[dim]{target}: prefill {len(ids)} tokens {result.prefill_seconds:.3f} s, "
                  f"decode {steps / max(result.decode_seconds, 1e-9):.1f} tokens/s[/]")


@app.command("llm")
def compile_llm(
    params_file: Annotated[Path, typer.Argument(help="an LLM params file (params/smollm2.yaml)")],
    speed: Annotated[bool, typer.Option(help="also measure prefill/decode tokens/s")] = True,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Compile every target of an LLM params file (export with KV cache, weight-only
    calibration, ORT engines) and validate them; report in build/llm/NAME/report.json."""
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
