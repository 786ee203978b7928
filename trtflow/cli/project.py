"""Starting a project: `prepare` (demo data), `inspect` and `init` (your own model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from trtflow.cli.app import ROOT_OPTION, app, console, fail, out
from trtflow.errors import TrtflowError


@app.command()
def prepare(root: Annotated[Path, ROOT_OPTION] = Path(".")) -> None:
    """Write the demo data sets under data/ (deterministic: digits, sentences, resnet18)."""
    from trtflow.project import configure_environment

    configure_environment(root.resolve())
    from trtflow.sources.builtin import write_demo_data

    for path in write_demo_data(root.resolve()):
        console.print(f"  wrote {path.relative_to(root.resolve())}")


@app.command()
def inspect(
    source: Annotated[str, typer.Argument(help="model.onnx | model.pt2 | pkg.mod:factory | "
                                          "models:/NAME/VERSION | digits|minilm|resnet18")],
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Print a model source's inputs, outputs, op histogram and parameter count."""
    from trtflow.project import configure_environment

    configure_environment(root.resolve())
    try:
        from trtflow.sources.describe import describe

        info = describe(source, root.resolve())
    except TrtflowError as exc:
        fail(exc)
        return
    out.print(f"[bold]{info['name']}[/]  ({next(iter(info['source']))} source), "
              f"{info['parameters']:,} parameters")
    table = Table("input", "dtype", "shape")
    for spec in info.get("inputs") or []:
        table.add_row(spec["name"], spec["dtype"], str(spec["shape"]))
    out.print(table if info.get("inputs") else f"inputs: {info.get('inputs_note')}")
    out.print(f"outputs: {info.get('outputs')}")
    out.print("ops: " + ", ".join(f"{k} x{v}" for k, v in info["ops"].items()))


@app.command()
def init(
    source: Annotated[str, typer.Argument(help="same forms as `trtflow inspect`")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="params file to "
                                                "write; default params/<name>.yaml")] = None,
    calibration: Annotated[str | None, typer.Option(
        help="calibration .npz (keys: the input names); adds an int8 target")] = None,
    evaluation: Annotated[str | None, typer.Option(
        help="evaluation .npz (input names + an integer labels array)")] = None,
    weights: Annotated[str | None, typer.Option(
        help="trained weights for a factory source (.safetensors or state-dict .pt)")] = None,
    input_specs: Annotated[list[str] | None, typer.Option(
        "--input", help="a factory source's input, NAME:SHAPE[:DTYPE] (repeat per input), "
        "e.g. image:batch,3,224,224 or ids:batch,seq:int64")] = None,
    name: Annotated[str | None, typer.Option(
        help="the model's name (default: from the source; must differ from the name of "
        "another source's params)")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Write a params skeleton for your own model, to edit and then `trtflow run`."""
    from trtflow.project import configure_environment

    configure_environment(root.resolve())
    try:
        from trtflow.errors import ParamsError
        from trtflow.names import check_name
        from trtflow.sources.describe import (
            check_name_free,
            describe,
            model_name_for,
            params_skeleton,
            parse_input_option,
            source_from_arg,
        )

        specs = [parse_input_option(text) for text in input_specs or []]
        # the name first: a clash is refused before the model is loaded
        model_name = check_name(name, "--name") if name is not None else \
            model_name_for(source, root.resolve())
        path = output or root / "params" / f"{model_name}.yaml"
        check_name_free(model_name, source_from_arg(source, weights).model_dump(
            exclude_none=True), root / "params", name is not None,
            replacing=path if force else None)
        info = {**describe(source, root.resolve(), weights, specs), "name": model_name}
        if path.exists() and not force:
            raise ParamsError(f"{path} exists; pass --force to overwrite it")
        path.parent.mkdir(parents=True, exist_ok=True)
        from trtflow.atomic import atomic_file

        with atomic_file(path, "w") as f:
            f.write(params_skeleton(info, root.resolve(), calibration, evaluation, weights))
    except TrtflowError as exc:
        fail(exc)
        return
    out.print(f"wrote {path} (model '{info['name']}'): check it, then `trtflow run {path}`")
