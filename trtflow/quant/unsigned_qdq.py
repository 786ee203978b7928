"""Re-encode non-negative int8 activations as uint8 with zero point 0 (the same values).

trtflow's ORT-placement Q/DQ stores a tensor known to be non-negative (a Relu output)
as int8 over [0, amax] with zero point -128, the form ONNX Runtime drops the Relu for.
OpenVINO's CPU plugin reads that as *asymmetric* int8 and adds an Eltwise per tensor to
shift it (resnet18, AMX host: 19 extra Eltwise layers, 25x slower than the TensorRT
placement; the digits CNN computed wrongly in OpenVINO 2026.4). The same grid as uint8
with zero point 0, q_u8 = q_i8 + 128, is what NNCF emits for Relu outputs and what the
plugin fuses into u8 convolutions. The rewrite is exact: every dequantized value is
unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _is_shifted_int8(value: ir.Value | None) -> bool:
    """A scalar int8 zero point of -128: the [0, amax] encoding of a non-negative tensor."""
    if value is None or value.const_value is None:
        return False
    array = value.const_value.numpy()
    return array.dtype == np.int8 and array.size == 1 and int(array.reshape(())) == -128


def unsigned_nonnegative(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The model with every int8 zero point of -128 (and its quantized tensors) as uint8
    zero point 0; returns it and how many zero points were re-encoded."""
    ir_model = ir.from_proto(model)
    graph = ir_model.graph
    zero_points: set[ir.Value] = set()
    for node in graph:
        if node.op_type in _QDQ_OPS and len(node.inputs) > 2 and _is_shifted_int8(node.inputs[2]):
            zero_points.add(node.inputs[2])  # type: ignore[arg-type]
    for zp in zero_points:
        zp.const_value = ir.tensor(np.array(0, np.uint8), name=zp.name)
        zp.dtype = ir.DataType.UINT8
        for use in zp.uses():
            if use.node.op_type == "QuantizeLinear":
                use.node.outputs[0].dtype = ir.DataType.UINT8
    proto = ir.to_proto(ir_model)
    onnx.checker.check_model(proto, full_check=True)
    return proto, len(zero_points)
