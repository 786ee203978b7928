"""GPTQ (Frantar et al. 2022): weight-only rounding with second-order error compensation.

For a projection y = x W (W[in, out]) and calibration inputs X, GPTQ rounds W one input
row at a time and spreads each row's rounding error over the rows not yet rounded,
weighted by the inverse Hessian H^-1 of the layer's squared output error (H = X^T X):
after rounding row i, the remaining rows move by -err_i H^-1[i, j] / H^-1[i, i], which
is the least-squares correction of ||X W - X Q||^2. Rows are taken in blocks (the "lazy
batch" of the paper) so most of the work is one matrix product per block.

Groups stay contiguous along the input dimension (MatMulNBits' layout): each group's
scale and zero point are chosen when GPTQ reaches the group's first row, from the rows
as updated so far, by a clipping search that minimises the Hessian-weighted error of the
group (d^T H_gg d, H_gg the group's diagonal block). With act_order the rows are
visited by decreasing H_ii (the most active input channels first); the groups' scales
are then fixed before the loop from the original weights ("static groups"), since the
visiting order no longer follows the groups.

Projections that share an input (q/k/v, gate/up) share H and are processed as one
matrix. All choices use calibration text only.
"""

from __future__ import annotations

import numpy as np

from trtflow.errors import CalibrationError
from trtflow.llm.weight_only import QuantizedWeight, check_group, grid_params

DAMP = 0.01  # dampening: fraction of the mean diagonal added to H (the paper's 1 %)
BLOCK = 128


def hessian(x: np.ndarray) -> np.ndarray:
    """H = X^T X / rows (float64) of calibration input rows X[rows, in]."""
    x64 = x.astype(np.float64)
    return (x64.T @ x64) / max(len(x64), 1)


def _inverse_cholesky(h: np.ndarray, damp: float, name: str) -> np.ndarray:
    """The upper Cholesky factor of H^-1 (what the GPTQ recursion reads row by row)."""
    h = h.copy()
    diag = np.arange(len(h))
    h[diag, diag] += damp * float(np.mean(np.diag(h)))
    for _ in range(5):
        try:
            # with J the order reversal and J H J = M M^T: H^-1 = U^T U, U = J M^-1 J upper
            # triangular (one factorisation and one triangular inverse)
            m_inv = np.linalg.inv(np.linalg.cholesky(h[::-1, ::-1]))
            if not np.isfinite(m_inv).all():
                raise np.linalg.LinAlgError
            return np.ascontiguousarray(m_inv[::-1, ::-1])
        except np.linalg.LinAlgError:
            h[diag, diag] += damp * float(np.mean(np.diag(h)))
    raise CalibrationError(f"{name}: the calibration Hessian is not positive definite even "
                           "after dampening; expected calibration text that exercises the "
                           "layer (more windows or rows)")


def gptq_quantize(w: np.ndarray, h: np.ndarray, bits: int, group_size: int, symmetric: bool,
                  act_order: bool = False, clip_ratios: tuple[float, ...] = (1.0,),
                  damp: float = DAMP, name: str = "weight") -> QuantizedWeight:
    """GPTQ codes for W[in, out] given the input Hessian H[in, in] (see `hessian`)."""
    rows, cols = w.shape
    check_group(name, rows, group_size)
    if h.shape != (rows, rows):
        raise CalibrationError(f"{name}: Hessian of shape {h.shape}; expected ({rows}, {rows}) "
                               "(the input dimension of the weight)")
    groups = rows // group_size
    h = h.astype(np.float64).copy()
    work = w.astype(np.float64).copy()  # rows are input channels, updated in place
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    work[dead] = 0.0
    scales = np.zeros((cols, groups), np.float64)
    zeros = np.zeros((cols, groups), np.float64)
    ratios = np.ones((cols, groups), np.float32)

    def fix_group(g: int, values: np.ndarray) -> None:
        """Scale/zero of group g from its rows `values` [group_size, out]."""
        block = h[g * group_size:(g + 1) * group_size, g * group_size:(g + 1) * group_size]
        s, z, r = grid_params(values, block, bits, symmetric, clip_ratios)
        scales[:, g], zeros[:, g], ratios[:, g] = s, z, r

    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(rows)
    if act_order:
        for g in range(groups):
            fix_group(g, work[g * group_size:(g + 1) * group_size])
    hp = h[np.ix_(order, order)]
    wp = work[order]
    u = _inverse_cholesky(hp, damp, name)  # upper factor, rows in visiting order
    top = 2 ** bits - 1
    codes = np.zeros((rows, cols), np.uint8)  # in visiting order
    block = max(BLOCK // group_size, 1) * group_size
    for start in range(0, rows, block):
        end = min(start + block, rows)
        w1 = wp[start:end].copy()
        err1 = np.zeros_like(w1)
        u1 = u[start:end, start:end]
        for i in range(end - start):
            row = order[start + i]
            g = row // group_size
            if not act_order and row % group_size == 0:
                # the group's rows as updated so far (a block holds whole groups)
                fix_group(g, w1[i:i + group_size])
            s, z = scales[:, g], zeros[:, g]
            q = np.clip(np.round(w1[i] / s) + z, 0, top)
            codes[start + i] = q
            err = (w1[i] - (q - z) * s) / u1[i, i]
            w1[i:] -= np.outer(u1[i, i:], err)
            err1[i] = err
        wp[end:] -= u[start:end, end:].T @ err1
    codes_in = np.empty_like(codes)
    codes_in[order] = codes
    return QuantizedWeight(
        codes=np.ascontiguousarray(codes_in.T.reshape(cols, groups, group_size)),
        scales=scales.astype(np.float32), zero_points=zeros.astype(np.float32), bits=bits,
        group_size=group_size, symmetric=symmetric, clip_ratio=ratios)
