"""A MobileNetV2-style benchmark net (inverted residuals, depthwise convs, squeeze-excite),
trained here on scikit-learn's bundled digits: the kind of model where INT8 can run
slower than FP32 (depthwise convs, small tensors), compiled as a user would (a factory
source plus weights), nothing downloaded.

`prepare(root)` trains it once (seeded, one thread) and writes, under
`build/bench/mobilenet_digits/`, the weights, the calibration/evaluation npz (8x8
digits upsampled to 32x32) and the params file `bench/engine.py` compiles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

SIZE = 32  # digits are 8x8; upsampled so the net has spatial work to do
OUT_DIR = Path("build") / "bench" / "mobilenet_digits"
PARAMS_FILE = "params.yaml"
TRAIN_VERSION = "mnv2-digits-1"


class SqueezeExcite(nn.Module):
    """Channel gates from the global average: 1x1 conv down, ReLU, 1x1 conv up, hard sigmoid."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.down = nn.Conv2d(channels, hidden, 1)
        self.up = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = nn.functional.adaptive_avg_pool2d(x, 1)
        gate = nn.functional.hardsigmoid(self.up(torch.relu(self.down(gate))))
        return x * gate


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise (stride) -> squeeze-excite -> 1x1 project (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            SqueezeExcite(hidden),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.skip else out


class MobileNetV2Digits(nn.Module):
    """~90k parameters; 1x32x32 inputs in [0, 1], 10 classes."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                   nn.ReLU6()]
        cin = 16
        for cout, stride in ((24, 2), (24, 1), (32, 2), (32, 1), (64, 2), (64, 1)):
            layers.append(InvertedResidual(cin, cout, stride))
            cin = cout
        layers += [nn.Conv2d(cin, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(image), 1)
        return self.classifier(torch.flatten(x, 1))


def upsample(images: np.ndarray) -> np.ndarray:
    """(n, 1, 8, 8) -> (n, 1, 32, 32), bilinear, float32 in [0, 1]."""
    t = torch.from_numpy(images)
    out = nn.functional.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return out.clamp(0, 1).numpy().astype(np.float32)


def train(images: np.ndarray, labels: np.ndarray, epochs: int = 25, seed: int = 0
          ) -> MobileNetV2Digits:
    """Adam with a cosine schedule and small random shifts; one thread, seeded."""
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = MobileNetV2Digits()
        opt = torch.optim.Adam(model.parameters(), lr=4e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        x, y = torch.from_numpy(images), torch.from_numpy(labels)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(y), generator=gen).split(64):
                dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
                batch = torch.roll(x[idx], shifts=(dx, dy), dims=(2, 3))
                opt.zero_grad()
                nn.functional.cross_entropy(model(batch), y[idx]).backward()
                opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


PARAMS = """# Written by bench/mobilenet_digits.py: a MobileNetV2-style net on digits (32x32).
model:
  name: mnv2-digits
  source:
    factory: mobilenet_digits:MobileNetV2Digits
    weights: {out}/weights.safetensors
  inputs:
    - name: image
      shape: [batch, 1, {size}, {size}]
      range: [0.0, 1.0]
  outputs: [logits]
data:
  calibration:
    npz: {out}/calibration.npz
  evaluation:
    npz: {out}/evaluation.npz
    labels: label
targets:
  int8:
    backend: onnxruntime
    device: cpu
    precision: int8
  best:
    precision: best
    gates:
      min_agreement: 0.997
validate:
  metric: top1
  batch_sizes: [1, 8]
  gates:
    max_accuracy_drop: 0.003
"""


def prepare(root: Path) -> Path:
    """Train (once) and write weights, data and params under `root/OUT_DIR`; returns the
    params path. The bench puts `bench/` on sys.path so the factory imports."""
    from safetensors.torch import save_file

    from trtflow.sources.builtin import digits_splits

    out = root / OUT_DIR
    params = out / PARAMS_FILE
    stamp = out / "version"
    if params.is_file() and stamp.is_file() and stamp.read_text() == TRAIN_VERSION:
        return params
    out.mkdir(parents=True, exist_ok=True)
    splits = {k: (upsample(x), y) for k, (x, y) in digits_splits().items()}
    model = train(*splits["train"])
    save_file(model.state_dict(), str(out / "weights.safetensors"))
    for split in ("calibration", "evaluation"):
        images, labels = splits[split]
        np.savez(out / f"{split}.npz", image=images, label=labels)
    rel = OUT_DIR.as_posix()
    params.write_text(PARAMS.format(out=rel, size=SIZE))
    stamp.write_text(TRAIN_VERSION)
    return params


if __name__ == "__main__":
    import sys

    here = Path(__file__).resolve().parent
    path = prepare(here.parent)
    model = MobileNetV2Digits()
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path.parent / "weights.safetensors")))
    data = np.load(path.parent / "evaluation.npz")
    with torch.no_grad():
        acc = (model.eval()(torch.from_numpy(data["image"])).argmax(1).numpy()
               == data["label"]).mean()
    print(f"{path}: eval top-1 {acc:.4f}", file=sys.stderr)
