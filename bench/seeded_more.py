"""A RegNetY-800MF-shaped CNN (squeeze-excite) and a DistilBERT-shaped encoder, built in
code with seeded weights, beside ``bench/seeded_models.py``'s EfficientNet/MobileNet.

RegNetY-800MF's layout (torchvision's ``regnet_y_800mf``: depths 1/3/8/2, widths
64/144/320/784, group width 16, bottleneck 1, SE ratio 0.25 of the block input): grouped
3x3 convolutions and a sigmoid squeeze-excite gate in every block, the kind of model on
which issue 26 found entropy INT8 at cosine 0.986 (gate 0.99) where MinMax kept 0.993.
The DistilBERT shape is ``transformers.DistilBertModel`` at its default config (6 layers,
768 wide, 12 heads, FFN 3072) with a smaller vocabulary (8,000: the embedding table is a
lookup, not compute), mean-pooled. Judge both by output error, never by top-1.
"""

from __future__ import annotations

import torch
from seeded_models import DistilBertShaped, seeded  # type: ignore[import-not-found]
from torch import nn


class _YBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_width: int = 16,
                 se_ratio: float = 0.25) -> None:
        super().__init__()
        groups = cout // group_width
        squeeze = max(1, int(round(cin * se_ratio)))
        self.a = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                               nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, stride, 1, groups=groups, bias=False),
                               nn.BatchNorm2d(cout), nn.ReLU())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cout, squeeze, 1), nn.ReLU(),
                                nn.Conv2d(squeeze, cout, 1), nn.Sigmoid())
        self.c = nn.Sequential(nn.Conv2d(cout, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.proj = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(self.a(x))
        h = self.c(h * self.se(h))
        return self.act(h + (x if self.proj is None else self.proj(x)))


class RegNetY800MFShaped(nn.Module):
    DEPTHS, WIDTHS = (1, 3, 8, 2), (64, 144, 320, 784)

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU())
        stages: list[nn.Module] = []
        cin = 32
        for depth, width in zip(self.DEPTHS, self.WIDTHS, strict=True):
            blocks = [_YBlock(cin if i == 0 else width, width, 2 if i == 0 else 1)
                      for i in range(depth)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.trunk = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.trunk(self.stem(image))), 1))


def regnety_800mf_shaped(seed: int = 0) -> nn.Module:
    model = seeded(RegNetY800MFShaped(), seed)
    # seeded() draws BatchNorm statistics away from (0, 1); the residual sums then grow
    # block by block, so scale each block's last BN down (as zero-init-gamma training does)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _YBlock):
                bn = m.c[1]
                assert isinstance(bn, nn.BatchNorm2d)
                bn.weight.mul_(0.3)
    return model.eval()


def distilbert_shaped(seed: int = 0) -> nn.Module:
    """seeded_models' DistilBERT-shaped encoder with an 8,000-token vocabulary."""
    return DistilBertShaped(seed, vocab_size=8000).eval()
