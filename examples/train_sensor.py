"""Your own model, end to end: train a small 1-D CNN on generated sensor windows.

This file stands for *your* training job; trtflow never imports it except through
the `factory` source (`examples.train_sensor:make_model`). It writes:

    examples/out/sensor.pt2               torch.export archive  (exported_program source)
    examples/out/sensor.safetensors       weights               (factory + weights source)
    examples/out/sensor.onnx              ONNX                  (onnx source)
    examples/out/calibration.npz          inputs for INT8 calibration (key: window)
    examples/out/evaluation.npz           held-out inputs + labels    (keys: window, label)
    examples/out/request.json             two windows for `mlflow models predict`

Then (README.md, "Compile your own model"):
    trtflow init examples/out/sensor.pt2 -o params/sensor.yaml \
        --calibration examples/out/calibration.npz --evaluation examples/out/evaluation.npz
    trtflow run params/sensor.yaml
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

OUT = Path(__file__).resolve().parent / "out"
CLASSES = ("idle", "walking", "running")


class SensorNet(nn.Module):
    """Two accelerometer channels x 64 samples -> activity class."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(2, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
            nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(),
        )
        self.head = nn.Linear(32, len(CLASSES))

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(window).mean(-1))


def make_model() -> SensorNet:
    return SensorNet()


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sine bursts whose frequency and amplitude depend on the activity, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    t = np.linspace(0, 1, 64, dtype=np.float32)
    freq = np.array([0.5, 2.0, 5.0])[labels][:, None] * rng.uniform(0.8, 1.2, (n, 1))
    amp = np.array([0.1, 1.0, 2.0])[labels][:, None]
    x = np.stack([amp * np.sin(2 * np.pi * freq * t), amp * np.cos(2 * np.pi * freq * t)], 1)
    x += rng.normal(0, 0.2, x.shape)
    return x.astype(np.float32), labels.astype(np.int64)


def main() -> None:
    torch.manual_seed(0)
    OUT.mkdir(exist_ok=True)
    x, y = make_data(2000, seed=0)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(15):
        model.train()
        for idx in torch.randperm(len(yt)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    cal_x, _ = make_data(256, seed=1)
    ev_x, ev_y = make_data(512, seed=2)
    with torch.no_grad():
        acc = (model(torch.from_numpy(ev_x)).argmax(1).numpy() == ev_y).mean()
    print(f"held-out accuracy {acc:.4f}")
    np.savez(OUT / "calibration.npz", window=cal_x)
    np.savez(OUT / "evaluation.npz", window=ev_x, label=ev_y)
    save_file(model.state_dict(), str(OUT / "sensor.safetensors"))
    # MLflow's JSON request format for a tensor-signature model: {"inputs": {name: batch}}
    (OUT / "request.json").write_text(json.dumps({"inputs": {"window": ev_x[:2].tolist()}}))
    example = (torch.from_numpy(ev_x[:2]),)
    batch = {0: torch.export.Dim("batch")}
    torch.export.save(torch.export.export(model, example, dynamic_shapes=(batch,)),
                      str(OUT / "sensor.pt2"))
    torch.onnx.export(model, example, str(OUT / "sensor.onnx"), dynamo=True,
                      external_data=False, input_names=["window"], output_names=["logits"],
                      dynamic_shapes=(batch,))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
