"""Inputs a graph itself allows: the integer id ranges its embedding tables give, and
random feeds inside them (for checks that run a graph without data, such as OpenVINO's
kernel check). Feeds for a model with params use `trtflow.sources.synthetic`, which
adds params ranges and the memory budget.
"""

from __future__ import annotations

import numpy as np
import onnx

from trtflow.errors import ModelError

ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool"}


def random_feeds(model: onnx.ModelProto, batch: int, seed: int = 0, dynamic_size: int = 16
                 ) -> dict[str, np.ndarray]:
    """Random inputs for `model` (dynamic dims: `batch`, then `dynamic_size`): floats in
    [-1, 1], integer ids inside the table they index, else 0/1 (valid for any id or
    mask), booleans 0/1."""
    inits = {i.name for i in model.graph.initializer}
    ranges = gather_ranges(model)
    rng = np.random.default_rng(seed)
    out = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        ttype = value.type.tensor_type
        dtype = ONNX_DTYPES.get(ttype.elem_type)
        if dtype is None:
            raise ModelError(f"ONNX input '{value.name}' has element type {ttype.elem_type}, "
                             f"supported: {sorted(ONNX_DTYPES.values())}")
        shape = [d.dim_value if d.HasField("dim_value") else (batch if axis == 0 else
                                                              dynamic_size)
                 for axis, d in enumerate(ttype.shape.dim)]
        if dtype in ("int64", "int32", "bool"):
            lo, hi = ranges.get(value.name, (0, 1)) if dtype != "bool" else (0, 1)
            out[value.name] = rng.integers(int(lo), int(hi) + 1, size=shape).astype(dtype)
        else:
            out[value.name] = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    return out


_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}


def gather_ranges(model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    """{integer input: (0, rows - 1)} where the input (through shape-only ops) indexes a
    Gather on an initializer table: the valid ids are that table's rows (the smallest,
    if several tables read it)."""
    tables = {i.name: list(i.dims) for i in model.graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    ranges: dict[str, tuple[float, float]] = {}
    for value in model.graph.input:
        rows, frontier, seen = [], [value.name], set()
        while frontier:
            name = frontier.pop()
            seen.add(name)
            for node in users.get(name, []):
                if node.op_type in _PASS_THROUGH and node.input[0] == name:
                    frontier += [o for o in node.output if o not in seen]
                elif node.op_type == "Gather" and len(node.input) > 1 \
                        and node.input[1] == name and node.input[0] in tables:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    dims = tables[node.input[0]]
                    if -len(dims) <= axis < len(dims):
                        rows.append(dims[axis])
        if rows and min(rows) > 0:
            ranges[value.name] = (0.0, float(min(rows) - 1))
    return ranges
