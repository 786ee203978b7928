"""`models:/NAME/VERSION` or `models:/NAME@ALIAS`: a PyTorch model logged with mlflow.pytorch.

MLflow 3 saves PyTorch models as a `torch.export` archive (`data/model.pt2`) by default;
that form is loaded like any `.pt2` and needs no pickle. A model MLflow saved with
pickle is refused unless the params opt in (`allow_pickle: true`), and then MLflow's own
guard (`MLFLOW_ALLOW_PICKLE_DESERIALIZATION`) is set for that one load.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from trtflow.errors import ModelError
from trtflow.store import ArtifactStore, make_key

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


def resolve(uri: str) -> tuple[str, str, str]:
    """(name, version, run_id) of a registry URI; an alias is resolved to its version now."""
    match = _URI.match(uri)
    if not match:
        raise ModelError(f"model.source.mlflow '{uri}' must look like models:/NAME/VERSION or "
                         "models:/NAME@ALIAS")
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    name = match["name"]
    try:
        mv = (client.get_model_version(name, match["version"]) if match["version"]
              else client.get_model_version_by_alias(name, match["alias"]))
    except MlflowException as exc:
        raise ModelError(f"model.source.mlflow '{uri}' is not in the registry at "
                         f"{mlflow.get_tracking_uri()}: {exc.message}") from None
    return name, str(mv.version), str(mv.run_id)


def download(uri: str, store: ArtifactStore) -> Path:
    """The registered model's files, cached in the store by (name, version, run)."""
    import mlflow

    name, version, run_id = resolve(uri)
    key = make_key("mlflow-model", "1", name=name, model_version=version, run_id=run_id)
    art = store.get("mlflow-model", key)
    if art is None:
        with store.writer("mlflow-model", key, {"uri": f"models:/{name}/{version}"}) as tmp:
            mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(tmp))
        art = store.get("mlflow-model", key)
        assert art is not None
    return art.path


def pytorch_flavor(model_dir: Path) -> tuple[Path | None, dict]:
    """(path of model.pt2 or None, the pytorch flavor config) from an MLmodel file."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise ModelError(f"{model_dir} has no MLmodel file: not an MLflow model")
    from trtflow.yamlfile import load_yaml

    doc = load_yaml(mlmodel, ModelError)
    flavors = doc.get("flavors", {}) if isinstance(doc, dict) else None
    if not isinstance(flavors, dict):
        raise ModelError(f"{mlmodel}: expected a mapping with 'flavors', got "
                         f"{type(doc).__name__}")
    if "pytorch" not in flavors:
        raise ModelError(f"{model_dir}: the MLflow model has no pytorch flavor "
                         f"(flavors: {sorted(flavors)})")
    flavor = flavors["pytorch"]
    data = flavor.get("model_data", "data") if isinstance(flavor, dict) else None
    if not isinstance(data, str) or Path(data).is_absolute() or ".." in Path(data).parts:
        raise ModelError(f"{mlmodel}: flavors.pytorch.model_data {data!r} is not a folder "
                         "inside the model")
    pt2 = model_dir / data / "model.pt2"
    return (pt2 if pt2.is_file() else None), flavor


def load_pickled(model_dir: Path, uri: str):  # type: ignore[no-untyped-def]
    """Only with `allow_pickle: true`: MLflow's own loader, with its guard lifted for it."""
    import mlflow

    previous = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"
    try:
        return mlflow.pytorch.load_model(str(model_dir), map_location="cpu")
    except Exception as exc:
        raise ModelError(f"model.source.mlflow '{uri}': MLflow could not load the pickled "
                         f"model: {str(exc).splitlines()[0][:300]}") from None
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
        else:
            os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = previous
