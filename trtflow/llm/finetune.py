"""A short, seeded fine-tune of a causal LM on the calibration text.

Its purpose is measurement, not quality: a GGUF's weights sit on its 4-bit grid, so
re-quantizing them to INT4 at the same block size flatters the accuracy. A few AdamW
steps move every weight off that grid by about the grid's own step, giving a model on
which the INT4/INT8 perplexity gates mean what they say.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trtflow.llm.config import FineTune


def grid_offset(weight: np.ndarray, bits: int = 4, group_size: int = 32) -> float:
    """How far W[in, out] lies from its own asymmetric `bits` grid (RTN relative error):
    ~0 for weights dequantized from such a grid, larger once they move off it."""
    from trtflow.llm.weight_only import quantize_groups

    q = quantize_groups(weight, bits, group_size, symmetric=False)
    return float(np.linalg.norm(q.dequantize() - weight) / np.linalg.norm(weight))


def finetune(model: Any, windows: np.ndarray, cfg: FineTune) -> dict[str, float]:
    """Fine-tune `model` in place on token windows [n, window]; returns the first and
    last training loss."""
    import torch

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    losses = []
    for _ in range(cfg.steps):
        batch = torch.from_numpy(windows[rng.choice(len(windows), cfg.batch, replace=False)])
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    model.eval()
    for p in params:
        p.requires_grad_(False)
    return {"first_loss": losses[0], "last_loss": losses[-1], "steps": cfg.steps}
