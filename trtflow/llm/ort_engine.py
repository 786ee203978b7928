"""ONNX Runtime engines of the decoder: the float KV-cache graph (by default the fused
graph of `trtflow.llm.fused_graph`; `fused=False` keeps the traced one of
`trtflow.llm.export`), and the same graph with every quantized projection replaced by
`com.microsoft.MatMulNBits` carrying trtflow's own codes, scales and zero points. The
fused graph's packed Q/K/V projection gets the three quantized projections side by side.

`accuracy_level` 4 lets the CPU kernel quantize the activations to int8 per block
and run int8 dot products (VNNI where the CPU has it); level 0 dequantizes to float.
At 8 bits level 0 fell back to a slow path (28 ms vs 0.3 ms for a 576x1536 MatMul
here), so level 4 is the default for both widths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch

from trtflow.errors import BuildError
from trtflow.llm.export import DecoderShape, KVCacheDecoder, export_decoder
from trtflow.llm.fused_graph import PACKED, fused_graph, initializer_name
from trtflow.llm.weight_only import QuantizedDecoder, QuantizedWeight

ACCURACY_LEVEL = 4
__all__ = ["ACCURACY_LEVEL", "float_graph", "initializer_name", "matmulnbits_graph",
           "pack_codes", "pack_zero_points", "packed_weight"]


def float_graph(weights: dict[str, np.ndarray], shape: DecoderShape, path: Path,
                fused: bool = True) -> Path:
    """Write the KV-cache graph with these float weights: the fused graph (default) or,
    with `fused=False`, the traced export of `KVCacheDecoder`."""
    if fused:
        return fused_graph(weights, shape, path)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in weights.items()}
    return export_decoder(KVCacheDecoder(shape, tensors), path)


def packed_weight(parts: list[QuantizedWeight], what: str) -> QuantizedWeight:
    """Quantized projections sharing an input, side by side along the output: the codes,
    scales and zero points of W[in, out_1 + out_2 + ...]. They must share bits, group
    size and symmetry (one MatMulNBits node)."""
    first = parts[0]
    for q in parts[1:]:
        if (q.bits, q.group_size, q.symmetric, q.in_features) != (
                first.bits, first.group_size, first.symmetric, first.in_features):
            raise BuildError(f"{what}: the packed projections are quantized differently "
                             f"({first.bits}/{first.group_size}/{first.symmetric} vs "
                             f"{q.bits}/{q.group_size}/{q.symmetric} bits/group/symmetric); "
                             "expected one setting for all")
    return QuantizedWeight(codes=np.concatenate([q.codes for q in parts]),
                           scales=np.concatenate([q.scales for q in parts]),
                           zero_points=np.concatenate([q.zero_points for q in parts]),
                           bits=first.bits, group_size=first.group_size,
                           symmetric=first.symmetric)


def _quantized_by_initializer(quantized: QuantizedDecoder, graph_values: set[str]
                              ) -> dict[str, tuple[list[str], QuantizedWeight]]:
    """Initializer name -> (the weight keys it stands for, their quantized weight)."""
    by_name = {initializer_name(k): ([k], q) for k, q in quantized.weights.items()}
    for name in graph_values:  # packed projections of the fused graph
        for packed, parts in PACKED.items():
            suffix = "_" + packed
            if not (name.startswith("weights.layers_") and name.endswith(suffix)):
                continue
            layer = name[len("weights.layers_"):-len(suffix)]
            keys = [f"layers.{layer}.{p}" for p in parts]
            if all(k in quantized.weights for k in keys):
                by_name[name] = (keys, packed_weight([quantized.weights[k] for k in keys],
                                                     name))
    return by_name


def pack_codes(q: QuantizedWeight) -> np.ndarray:
    """Codes in MatMulNBits' B layout [out, groups, group_size * bits / 8]."""
    if q.bits == 8:
        return q.codes
    return (q.codes[..., 0::2] | (q.codes[..., 1::2] << 4)).astype(np.uint8)


def pack_zero_points(q: QuantizedWeight) -> np.ndarray:
    zp = q.zero_points.astype(np.uint8)
    if q.bits == 8:
        return zp.reshape(-1)
    if zp.shape[1] % 2:
        zp = np.concatenate([zp, np.zeros((zp.shape[0], 1), np.uint8)], axis=1)
    return (zp[:, 0::2] | (zp[:, 1::2] << 4)).reshape(-1).astype(np.uint8)


def _const(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name),
                     shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    graph.register_initializer(value)
    return value


def matmulnbits_graph(float_path: Path, quantized: QuantizedDecoder, path: Path,
                      accuracy_level: int = ACCURACY_LEVEL) -> Path:
    """The float graph with each quantized projection's MatMul as MatMulNBits, and the
    norm weights AWQ folded scales into."""
    model = ir.load(str(float_path))
    graph = model.graph
    by_name = _quantized_by_initializer(quantized, set(graph.initializers))
    replaced: set[str] = set()
    for node in list(graph):
        if node.op_type != "MatMul" or node.inputs[1] is None:
            continue
        entry = by_name.get(node.inputs[1].name or "")
        if entry is None:
            continue
        keys, q = entry
        base = node.inputs[1].name or ""
        inputs = [node.inputs[0], _const(graph, f"{base}.B", pack_codes(q)),
                  _const(graph, f"{base}.scales", q.scales.reshape(-1).astype(np.float32))]
        if not q.symmetric:
            inputs.append(_const(graph, f"{base}.zero_points", pack_zero_points(q)))
        new = ir.node("MatMulNBits", inputs, {
            "K": q.in_features, "N": int(q.codes.shape[0]), "bits": q.bits,
            "block_size": q.group_size, "accuracy_level": accuracy_level},
            domain="com.microsoft", name=f"{base}.MatMulNBits", outputs=[
                ir.Value(name=f"{base}.out")])
        graph.insert_before(node, new)
        old = node.outputs[0]
        out_name = old.name
        new.outputs[0].type = old.type or ir.TensorType(ir.DataType.FLOAT)
        new.outputs[0].shape = old.shape
        old.replace_all_uses_with(new.outputs[0], replace_graph_outputs=True)
        graph.remove(node, safe=True)
        old.name, new.outputs[0].name = f"{out_name}.float", out_name  # `logits` keeps its name
        replaced.update(keys)
    values = {v.name: v for node in graph for v in node.inputs if v is not None}
    for key, value in quantized.float_weights.items():  # the norms AWQ folded scales into
        if key in quantized.weights or not key.endswith("_norm"):
            continue
        current = values.get(initializer_name(key))
        if current is None:
            raise BuildError(f"{float_path}: no value {initializer_name(key)}; expected the "
                             "graph trtflow.llm.export writes")
        # a fresh initializer for the norm's own consumers: the exporter shares one
        # initializer between equal weights (through Identity nodes), e.g. all-ones norms
        folded = _const(graph, f"{current.name}.folded", value.astype(np.float32))
        for use in list(current.uses()):
            if use.node.op_type != "Identity":
                use.node.replace_input_with(use.idx, folded)
    missing = set(quantized.weights) - replaced
    if missing:
        raise BuildError(f"{float_path}: no MatMul reads {sorted(missing)[:3]}; expected the "
                         "graph trtflow.llm.export writes")
    for name in list(graph.initializers):
        if not graph.initializers[name].uses():
            del graph.initializers[name]
    model.opset_imports["com.microsoft"] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    ir.save(model, str(path))
    onnx.checker.check_model(str(path))
    return path
