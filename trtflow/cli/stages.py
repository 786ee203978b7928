"""`trtflow stage` (one stage for DVC), `publish` and `fetch` (engines to and from S3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trtflow.cli.app import ROOT_OPTION, app, fail, no_empty_state_dir, out, stage_line
from trtflow.errors import TrtflowError


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="export | cleanup | calibrate | build | validate")],
    params: Annotated[Path, typer.Option("--params", "-p", help="params YAML")],
    target: Annotated[str | None, typer.Option("--target", "-t", help="target (build, "
                                               "calibrate, validate)")] = None,
    output: Annotated[Path | None, typer.Option(
        help="copy the artifact here (DVC outs); default build/<model>/<stage>[-target]")] = None,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Run one stage outside Prefect (what `dvc repro` calls), with the same cache keys."""
    from trtflow.project import configure_environment

    root = root.resolve()
    try:
        with no_empty_state_dir(root):
            configure_environment(root)
            from trtflow.dvc_stage import run_single_stage

            result, dest = run_single_stage(name, params, target, output, root)
    except TrtflowError as exc:
        fail(exc)
        return
    shown = dest.relative_to(root) if dest.is_relative_to(root) else dest
    stage_line(result, target or "", str(shown))


BUCKET = typer.Option("--bucket", help="S3 bucket")
PREFIX = typer.Option("--prefix", help="key prefix; objects go to PREFIX/MODEL/VERSION/")
ENDPOINT = typer.Option("--endpoint-url", help="S3-compatible endpoint; default: the AWS "
                        "environment/config (AWS_ENDPOINT_URL_S3)")


@app.command()
def publish(
    params: Annotated[Path, typer.Argument(help="params YAML of the compiled model")],
    target: Annotated[str, typer.Option("--target", "-t", help="which target's engine")],
    bucket: Annotated[str, BUCKET],
    version: Annotated[str | None, typer.Option(
        help="version label; default <target>-<engine key[:12]> (content-addressed)")] = None,
    prefix: Annotated[str, PREFIX] = "trtflow",
    endpoint_url: Annotated[str | None, ENDPOINT] = None,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Upload a built engine and its manifest (sha256 of every file, params, lineage) to S3."""
    from trtflow.project import configure_environment

    root = root.resolve()
    configure_environment(root)
    try:
        from trtflow.dvc_stage import resolve_stages
        from trtflow.params import load_params
        from trtflow.track.publish import check_bucket
        from trtflow.track.release import publish_engine

        check_bucket(bucket, endpoint_url)  # before anything is built for it
        stages = resolve_stages("validate", params, target, root)
        result = publish_engine(load_params(params), root, target, stages, bucket, prefix,
                                endpoint_url, version)
    except TrtflowError as exc:
        fail(exc)
        return
    state = "already published, verified" if result.already_published else "published"
    out.print(f"{state}: {result.uri}")
    label = result.uri.rstrip("/").rsplit("/", 1)[-1]
    out.print(f"fetch it with: trtflow fetch {result.manifest['model']} {label} DIR "
              f"--bucket {bucket}" + (f" --prefix {prefix}" if prefix != "trtflow" else ""),
              soft_wrap=True, highlight=False)


@app.command()
def fetch(
    model: Annotated[str, typer.Argument(help="model name (params model.name)")],
    version: Annotated[str, typer.Argument(
        help="published label, the last part of the URI `trtflow history MODEL` prints "
        "(e.g. int8-713045f9a927); with --target, a registry version or alias of "
        "MODEL-TARGET (1, production)")],
    dest: Annotated[Path, typer.Argument(help="directory to create")],
    bucket: Annotated[str, BUCKET],
    target: Annotated[str | None, typer.Option(
        "--target", "-t", help="read VERSION as this target's registry version or alias and "
        "fetch what it was published as")] = None,
    prefix: Annotated[str, PREFIX] = "trtflow",
    endpoint_url: Annotated[str | None, ENDPOINT] = None,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Download a published engine, verifying every file's sha256 against its manifest."""
    from trtflow.track.publish import NotPublishedError

    try:
        from trtflow.track.publish import fetch as fetch_engine
        from trtflow.track.publish import s3_client

        label = registry_label(model, target, version, bucket, root) if target else version
        try:
            result = fetch_engine(bucket, prefix, model, label, dest,
                                  client=s3_client(endpoint_url) if endpoint_url else None)
        except NotPublishedError as exc:
            if target:
                raise
            raise NotPublishedError(f"{exc}{published_labels(model, version, root)}") from None
    except TrtflowError as exc:
        fail(exc)
        return
    out.print(f"fetched and verified {len(result.manifest['files'])} files: {result.dest}")


def registry_label(model: str, target: str, version: str, bucket: str, root: Path) -> str:
    """The published label of `model-target`'s registry version (or alias) `version`."""
    import os

    from trtflow.errors import RegistryError
    from trtflow.project import configure_environment, state_dir
    from trtflow.track import registry

    root = root.resolve()
    if not os.environ.get("MLFLOW_TRACKING_URI") and \
            not (state_dir(root) / "mlflow.db").is_file():
        raise RegistryError(f"--target reads the registry, and {root} has none (no "
                            ".trtflow/mlflow.db): run from the project directory or name it "
                            "with --root, or give the published label instead")
    configure_environment(root)
    name = registry.registered_name(model, target)
    rows = [r for r in registry.history(model) if r.name == name]
    row = next((r for r in rows if version in (r.version, *r.aliases)), None)
    if row is None:
        raise RegistryError(f"{name} has no version or alias '{version}' (versions: "
                            f"{', '.join(r.version for r in rows) or 'none'}; `trtflow "
                            f"history {model}` lists them)")
    if not row.published:
        raise RegistryError(f"{name} v{row.version} is not published: `trtflow publish PARAMS "
                            f"-t {target} --bucket {bucket}` publishes the engine its params "
                            "build")
    if not row.published.startswith(f"s3://{bucket}/"):
        raise RegistryError(f"{name} v{row.version} was published to {row.published}, not to "
                            f"the bucket {bucket}")
    return row.published.rstrip("/").rsplit("/", 1)[-1]


def published_labels(model: str, version: str, root: Path) -> str:
    """A hint for a label that is not published: what the registry says was published
    (a registry version number is not a label: `digits-int8 v3` is `int8-<engine key>`)."""
    import os

    from trtflow.project import state_dir

    root = root.resolve()
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri and not (state_dir(root) / "mlflow.db").is_file():
        return (f"; fetch takes the published label (the last part of the URI `trtflow "
                f"history {model}` prints, e.g. int8-713045f9a927), not a registry version")
    from trtflow.project import configure_environment

    configure_environment(root)
    try:
        from trtflow.track import registry

        rows = [r for r in registry.history(model) if r.published]
    except TrtflowError:
        rows = []
    labels = [(r, r.published.rstrip("/").rsplit("/", 1)[-1]) for r in rows]
    same = [f"{r.name} v{r.version} is {label}" for r, label in labels if r.version == version]
    if same:
        return (f"; '{version}' is a registry version, fetch takes the published label: "
                + ", ".join(same))
    if labels:
        return ("; fetch takes the published label; published: "
                + ", ".join(f"{label} ({r.name} v{r.version})" for r, label in labels))
    return (f"; the registry of {root} lists no published engine of '{model}' (`trtflow "
            f"publish PARAMS -t TARGET --bucket B` publishes one)")
