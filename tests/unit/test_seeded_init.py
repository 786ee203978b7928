"""The one seeded init of the demo and benchmark CNNs (trtflow.sources.models.seeded_init)."""

from __future__ import annotations

import torch
from torch import nn

from trtflow.sources.models import seeded_init


def _small() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1),
                         nn.Linear(4, 2))


def test_same_seed_same_weights_and_batchnorm_is_not_the_identity() -> None:
    a, b = seeded_init(_small(), seed=3), seeded_init(_small(), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))
    bn = a[1]
    assert isinstance(bn, nn.BatchNorm2d) and not bn.training
    assert bn.running_var is not None and bool((bn.running_var != 1).all())
    assert not torch.equal(seeded_init(_small(), seed=4)[0].weight, a[0].weight)


def test_biases_are_zero_unless_a_std_is_given_and_the_weights_before_them_agree() -> None:
    zero, drawn = seeded_init(_small()), seeded_init(_small(), bias_std=0.05)
    assert not zero[2].bias.any() and drawn[2].bias.abs().max() > 0
    assert torch.equal(zero[0].weight, drawn[0].weight)  # drawn before the first bias
    assert torch.equal(zero[2].weight, drawn[2].weight)
