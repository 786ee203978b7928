"""EfficientNet-B0- and MobileNetV3-Large-shaped CNNs and a DistilBERT-shaped encoder,
built in code with seeded weights.

torchvision cannot be installed beside torch 2.13 here, so the benchmarks build the two
CNN layouts themselves (torchvision's block tables): depthwise convolutions,
squeeze-excite gates, SiLU / hard-swish. Their weights come from
``trtflow.sources.models.seeded_init`` (the demo resnet18's init) with normal biases
(std 0.05), the draws these models have always had. The encoder is
``transformers.DistilBertModel`` at its default config (6 layers, 768 wide, 12 heads, FFN
3072, BERT's 30,522-token vocabulary, so the MiniLM demo's tokenized sentences fit),
mean-pooled, with transformers' own init under a fixed seed. Judge them by output error,
never by top-1.

Params compile them from a factory source run in the project root
(``factory: bench.seeded_models:efficientnet_b0_shaped``, ``weights: none``).
"""

from __future__ import annotations

import torch
from torch import nn

from trtflow.sources.models import seeded_init


def _divisible(value: float, divisor: int = 8) -> int:
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int, act: type[nn.Module],
                 gate: type[nn.Module]) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
             act: type[nn.Module] | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2,
                                         groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _InvertedResidual(nn.Module):
    """Expand 1x1, depthwise kxk, optional squeeze-excite, project 1x1; residual if shapes
    match (MBConv / MobileNetV3 bneck)."""

    def __init__(self, cin: int, expanded: int, cout: int, kernel: int, stride: int,
                 se_squeeze: int | None, act: type[nn.Module], gate: type[nn.Module],
                 se_act: type[nn.Module]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(_conv_bn(cin, expanded, 1, act=act))
        layers.append(_conv_bn(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se_squeeze:
            layers.append(_SqueezeExcite(expanded, se_squeeze, se_act, gate))
        layers.append(_conv_bn(expanded, cout, 1))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class EfficientNetB0Shaped(nn.Module):
    """EfficientNet-B0's layout (5.3M parameters), 3x224x224 inputs, 1000 classes."""

    # expand ratio, channels, repeats, stride, kernel (torchvision's b0 table)
    STAGES = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
              (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2, act=nn.SiLU)]
        cin = 32
        for expand, cout, repeats, stride, kernel in self.STAGES:
            for i in range(repeats):
                layers.append(_InvertedResidual(
                    cin, cin * expand, cout, kernel, stride if i == 0 else 1,
                    max(1, cin // 4), nn.SiLU, nn.Sigmoid, nn.SiLU))
                cin = cout
        layers.append(_conv_bn(cin, 1280, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(image)), 1))


class MobileNetV3LargeShaped(nn.Module):
    """MobileNetV3-Large's layout (5.5M parameters), 3x224x224 inputs, 1000 classes."""

    # kernel, expanded, out, squeeze-excite, hard-swish, stride (torchvision's table)
    BNECKS = ((3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2),
              (3, 72, 24, False, False, 1), (5, 72, 40, True, False, 2),
              (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
              (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1),
              (3, 184, 80, False, True, 1), (3, 184, 80, False, True, 1),
              (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
              (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1),
              (5, 960, 160, True, True, 1))

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 16, 3, 2, act=nn.Hardswish)]
        cin = 16
        for kernel, expanded, cout, se, hswish, stride in self.BNECKS:
            act: type[nn.Module] = nn.Hardswish if hswish else nn.ReLU
            layers.append(_InvertedResidual(
                cin, expanded, cout, kernel, stride, _divisible(expanded / 4) if se else None,
                act, nn.Hardsigmoid, nn.ReLU))
            cin = cout
        layers.append(_conv_bn(cin, 960, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(), nn.Linear(1280,
                                                                                 num_classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(image)), 1))


BIAS_STD = 0.05  # these CNNs' biases (the SE convs, the heads): normal, not zero


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """`seeded_init` with these models' biases (bench/seeded_more.py uses it too)."""
    return seeded_init(model, seed, bias_std=BIAS_STD)


def efficientnet_b0_shaped(seed: int = 0) -> nn.Module:
    return seeded(EfficientNetB0Shaped(), seed)


def mobilenet_v3_large_shaped(seed: int = 0) -> nn.Module:
    return seeded(MobileNetV3LargeShaped(), seed)


class DistilBertShaped(nn.Module):
    """Token ids + attention mask -> the mean-pooled last hidden state (768)."""

    def __init__(self, seed: int = 0, vocab_size: int = 30522) -> None:  # BERT's vocabulary
        super().__init__()
        from transformers import DistilBertConfig, DistilBertModel

        with torch.random.fork_rng():  # transformers draws its init from the global RNG
            torch.manual_seed(seed)
            self.encoder = DistilBertModel(DistilBertConfig(vocab_size=vocab_size,
                                                            attn_implementation="eager"))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def distilbert_shaped(seed: int = 0) -> nn.Module:
    return DistilBertShaped(seed).eval()
