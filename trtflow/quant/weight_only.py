"""Weight-only INT8: every MatMul/Gemm weight stored as int8 behind a DequantizeLinear.

Activations get no Q/DQ: a runtime that quantizes them itself per token at run time
(OpenVINO's CPU plugin with `DYNAMIC_QUANTIZATION_GROUP_SIZE`) then runs the MatMul
on int8 x int8. Weights are symmetric per output channel, as in the static Q/DQ
models (`trtflow.quant.qdq.quantize_weight`), so both share one weight encoding.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from trtflow.quant.qdq import quantize_weight


def _label(node: ir.Node) -> str:
    return node.name or node.outputs[0].name or node.op_type


def _output_axis(node: ir.Node) -> int | None:
    """The output-channel axis of a 2-D MatMul/Gemm weight (None: not quantized here)."""
    if node.op_type == "MatMul":
        return 1
    if node.op_type == "Gemm" and not node.attributes.get_int("transA", 0):
        return 0 if node.attributes.get_int("transB", 0) else 1
    return None


def weight_only_int8(model: onnx.ModelProto, skip: frozenset[str] = frozenset()
                     ) -> tuple[onnx.ModelProto, list[str]]:
    """The model with int8 MatMul/Gemm weights (nodes labelled in `skip` stay float);
    returns it and the labels of the nodes whose weights were quantized."""
    ir_model = ir.from_proto(model)
    graph = ir_model.graph
    done: dict[str, ir.Value] = {}
    quantized: list[str] = []
    for node in list(graph):
        axis = _output_axis(node) if node.op_type in ("MatMul", "Gemm") else None
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if axis is None or _label(node) in skip or weight is None or \
                weight.const_value is None or weight.is_graph_input():
            continue
        array = weight.const_value.numpy()
        if array.ndim != 2 or array.dtype != np.float32:
            continue
        name = weight.name or _label(node)
        if name not in done:
            q, scale = quantize_weight(array, axis)
            inputs = []
            for suffix, values in (("int8", q), ("scale", scale),
                                   ("zero_point", np.zeros_like(scale, np.int8))):
                value = ir.Value(name=f"{name}_{suffix}", const_value=ir.tensor(
                    values, name=f"{name}_{suffix}"), shape=ir.Shape(values.shape),
                    type=ir.TensorType(ir.DataType.from_numpy(values.dtype)))
                graph.register_initializer(value)
                inputs.append(value)
            dq = ir.node("DequantizeLinear", inputs, {"axis": axis},
                         name=f"{name}_DequantizeLinear")
            dq.outputs[0].name = f"{name}_dequantized"
            dq.outputs[0].dtype = ir.DataType.FLOAT
            dq.outputs[0].shape = weight.shape
            graph.insert_before(node, dq)
            done[name] = dq.outputs[0]
        node.replace_input_with(1, done[name])
        quantized.append(_label(node))
        if not weight.uses() and not weight.is_graph_output():
            graph.initializers.pop(name)
    proto = ir.to_proto(ir_model)
    onnx.checker.check_model(proto)
    return proto, quantized
