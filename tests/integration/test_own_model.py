"""A model trtflow has never seen, handed over as ONNX, .pt2 and factory + weights."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from flows.compile import compile_flow
from trtflow.context import Context
from trtflow.errors import ModelError
from trtflow.params import load_params
from trtflow.plan import EXPORT
from trtflow.sources import load_model
from trtflow.stage import run_step
from trtflow.stages.validation_report import ValidationReport

pytestmark = pytest.mark.integration


class SensorNet(nn.Module):
    """Defined only here: a 1-D conv net over 2-channel sensor windows, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 8, 5, padding=2)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(window))).mean(-1))


def make_sensor_net() -> SensorNet:
    return SensorNet()


def _trained(seed: int = 0) -> SensorNet:
    torch.manual_seed(seed)
    model = SensorNet()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("own")
    model = _trained()
    x = torch.randn(64, 2, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(x).argmax(1)
    np.savez(root / "eval.npz", window=x.numpy(), label=labels.numpy())
    torch.onnx.export(model, (x[:2],), str(root / "sensor.onnx"), dynamo=True,
                      external_data=False, input_names=["window"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    program = torch.export.export(model, (x[:2],),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(root / "sensor.pt2"))
    save_file(model.state_dict(), str(root / "sensor.safetensors"))
    torch.save(model.state_dict(), root / "sensor.pt")
    reference = model(x).detach().numpy()
    return {"root": root, "x": x.numpy(), "reference": reference}


def _params(root: Path, name: str, source: dict, **model_extra: object) -> Path:
    doc = {"model": {"name": name, "source": source, **model_extra},
           "data": {"evaluation": {"npz": "eval.npz", "labels": "label"}},
           "validate": {"warmup": 1, "iterations": 5, "batch_sizes": [1, 8]}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


FACTORY = f"{__name__}:make_sensor_net"
INPUTS = [{"name": "window", "shape": ["batch", 2, 32]}]


@pytest.mark.parametrize("form", ["onnx", "exported_program", "factory-safetensors",
                                  "factory-pt"])
def test_each_source_form_compiles_and_agrees(own: dict, form: str) -> None:
    root = own["root"]
    extra: dict = {}
    if form == "onnx":
        source = {"onnx": "sensor.onnx"}
    elif form == "exported_program":
        source = {"exported_program": "sensor.pt2"}
    else:
        weights = "sensor.safetensors" if form.endswith("safetensors") else "sensor.pt"
        source = {"factory": FACTORY, "weights": weights}
        extra = {"inputs": INPUTS, "outputs": ["logits"]}
    summary = compile_flow(str(_params(root, f"sensor-{form}", source, **extra)), str(root))
    quality = ValidationReport.of(summary["stages"]["fp32"][-1]).quality
    assert quality.accuracy == 1.0  # labels are the model's own predictions
    assert quality.agreement == 1.0
    assert quality.max_abs_error < 1e-4
    engine = Path(summary["stages"]["fp32"][0].path) / "engine.onnx"
    from trtflow.graph.parity import ort_run

    out = next(iter(ort_run(engine, {"window": own["x"]}).values()))
    np.testing.assert_allclose(out, own["reference"], atol=1e-4)


def test_state_dict_with_missing_and_extra_keys_is_one_error(own: dict) -> None:
    root = own["root"]
    state = _trained().state_dict()
    state.pop("head.bias")
    state["surprise.weight"] = torch.zeros(1)
    save_file(state, str(root / "bad.safetensors"))
    params = load_params(_params(root, "bad-keys", {"factory": FACTORY,
                                                    "weights": "bad.safetensors"},
                                 inputs=INPUTS))
    with pytest.raises(ModelError, match=r"missing keys \['head\.bias'\], unexpected keys "
                                         r"\['surprise\.weight'\]"):
        load_model(params.model, root, Context.create(params, root).store)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(self.marker),))


def test_pickled_object_is_refused_without_executing_it(own: dict) -> None:
    root = own["root"]
    marker = root / "pwned"
    with open(root / "evil.pt", "wb") as f:
        pickle.dump({"conv.weight": _Evil(str(marker))}, f)
    params = load_params(_params(root, "evil", {"factory": FACTORY, "weights": "evil.pt"},
                                 inputs=INPUTS))
    with pytest.raises(ModelError, match="refused without unpickling code"):
        load_model(params.model, root, Context.create(params, root).store)
    assert not marker.exists()


def test_factory_not_importable(own: dict) -> None:
    root = own["root"]
    params = load_params(_params(root, "noimp",
                                 {"factory": "no_such_pkg.models:build", "weights": "none"},
                                 inputs=INPUTS))
    before = sorted((root / ".trtflow" / "store").glob("export/*"))
    with pytest.raises(ModelError, match="'no_such_pkg.models:build' is not importable"):
        run_step(EXPORT, Context.create(params, root), None, [])
    assert sorted((root / ".trtflow" / "store").glob("export/*")) == before


def _log_to_registry(name: str, serialization: str) -> None:
    import mlflow

    from trtflow.track.mlflow_log import experiment_id

    model = _trained()
    example = np.random.default_rng(0).standard_normal((2, 2, 32)).astype(np.float32)
    with mlflow.start_run(experiment_id=experiment_id(f"{name}-training")):
        mlflow.pytorch.log_model(model, name="model", input_example=example,
                                 serialization_format=serialization,
                                 registered_model_name=name)
    client = mlflow.MlflowClient()
    version = max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    client.set_registered_model_alias(name, "candidate", version)


def test_registered_model_compiles_from_an_alias(own: dict) -> None:
    root = own["root"]
    _log_to_registry("sensor-registered", "pt2")
    path = _params(root, "sensor-mlflow", {"mlflow": "models:/sensor-registered@candidate"},
                   outputs=["logits"])
    summary = compile_flow(str(path), str(root))
    quality = ValidationReport.of(summary["stages"]["fp32"][-1]).quality
    assert quality.accuracy == 1.0 and quality.agreement == 1.0
    import mlflow

    run = mlflow.MlflowClient().get_run(summary["run_ids"]["parent"])
    assert run.data.tags["trtflow.source.mlflow"] == "models:/sensor-registered@candidate"
    assert run.data.tags["trtflow.source.pickle_allowed"] == "false"


def test_pickled_registered_model_is_refused_unless_allowed(own: dict) -> None:
    root = own["root"]
    _log_to_registry("sensor-pickled", "pickle")
    params = load_params(_params(root, "sensor-pickled", {"mlflow": "models:/sensor-pickled/1"},
                                 inputs=INPUTS))
    with pytest.raises(ModelError, match="saved with pickle.*refused"):
        load_model(params.model, root, Context.create(params, root).store)
    allowed = load_params(_params(root, "sensor-pickled-ok",
                                  {"mlflow": "models:/sensor-pickled/1", "allow_pickle": True},
                                  inputs=INPUTS))
    loaded = load_model(allowed.model, root, Context.create(allowed, root).store)
    assert loaded.module is not None


def test_unknown_registry_model_is_a_clear_error(own: dict) -> None:
    root = own["root"]
    params = load_params(_params(root, "ghost", {"mlflow": "models:/ghost@production"}))
    with pytest.raises(ModelError, match="'models:/ghost@production' is not in the registry"):
        load_model(params.model, root, Context.create(params, root).store)
