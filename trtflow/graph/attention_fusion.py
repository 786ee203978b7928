"""Transformer fusion for ONNX Runtime on CUDA: attention, SkipLayerNorm, BiasGelu, FP16.

ONNX Runtime's own transformer optimizer (`onnxruntime.transformers.optimizer`)
rewrites a BERT-like graph into its contrib ops: `Attention` (or `MultiHeadAttention`),
which the CUDA provider runs with its flash / memory-efficient kernels in fp16;
`SkipLayerNormalization` (residual Add + LayerNorm), `BiasGelu`/`FastGelu`,
`EmbedLayerNormalization`. The fused graph runs only on ONNX Runtime (contrib ops
in the `com.microsoft` domain), so this is the CUDA engine's cleanup, not the
shared cleanup stage. The report names what fused, so a graph the patterns miss
says so instead of silently running unfused.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trtflow.errors import BuildError

# The contrib ops the optimizer writes, in the order its report lists them.
FUSED_OPS = ("EmbedLayerNormalization", "Attention", "MultiHeadAttention", "Gelu", "FastGelu",
             "BiasGelu", "GemmFastGelu", "LayerNormalization", "SimplifiedLayerNormalization",
             "SkipLayerNormalization", "SkipSimplifiedLayerNormalization")
ATTENTION_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention")


def is_transformer(model: onnx.ModelProto) -> bool:
    """A Softmax fed by a MatMul: the attention pattern the optimizer looks for."""
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    return any(n.op_type == "Softmax" and any(producers.get(i) in ("MatMul", "Add", "Div",
                                                                   "Mul", "Where")
                                              for i in n.input)
               for n in model.graph.node)


# --- attention: the torch SDPA decomposition -> MultiHeadAttention --------------------


@dataclass
class _Graph:
    """Producer/consumer maps and constants of one graph (rebuilt after each rewrite)."""

    model: onnx.ModelProto
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        g = self.model.graph
        for node in g.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                self.consumers.setdefault(inp, []).append(node)
            if node.op_type == "Constant" and node.attribute and node.attribute[0].t.dims \
                    is not None and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        for init in g.initializer:
            self.constants[init.name] = numpy_helper.to_array(init)

    def op(self, name: str, *ops: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type in ops else None

    def scalar(self, name: str) -> float | None:
        value = self.constants.get(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _perm(node: onnx.NodeProto) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def _heads_input(g: _Graph, name: str, key: bool) -> tuple[str, float, int] | None:
    """Walk up from a Q (or K^T) operand of the scores MatMul to the [B, S, D] tensor that
    was split into heads (Reshape [B, S, -1, H] + Transpose 0,2,1,3). Returns (that
    tensor, the product of the scalar factors met on the way, head size H)."""
    scale, swapped, current = 1.0, False, name
    for _ in range(8):
        node = g.producer.get(current)
        if node is None:
            return None
        if node.op_type in ("Mul", "Div"):
            consts = [g.scalar(i) for i in node.input]
            if consts[1] is None or consts[0] is not None:
                return None
            scale *= consts[1] if node.op_type == "Mul" else 1.0 / consts[1]
            current = node.input[0]
        elif node.op_type == "Transpose" and _perm(node) == [0, 2, 1, 3]:
            reshape = g.op(node.input[0], "Reshape")
            if reshape is None or key != swapped:
                return None
            shape = _reshape_shape(g, reshape.input[1])
            if shape is None or len(shape) != 4 or shape[-1] <= 0:
                return None
            return reshape.input[0], scale, int(shape[-1])
        elif node.op_type == "Transpose" and _perm(node) in ([0, 2, 1], [0, 1, 3, 2]) and key:
            swapped = not swapped
            current = node.input[0]
        elif node.op_type == "Reshape":
            current = node.input[0]
        else:
            return None
    return None


def _reshape_shape(g: _Graph, name: str) -> list[int] | None:
    """A Reshape's target shape with unknown entries as 0: from a constant or a Concat of
    parts (the exporter's [B, S] from Shape ops, then constants [-1], [H])."""
    if name in g.constants:
        return [int(v) for v in g.constants[name].reshape(-1)]
    concat = g.op(name, "Concat")
    if concat is None:
        return None
    out: list[int] = []
    for part in concat.input:
        value = g.constants.get(part)
        out.extend([int(v) for v in value.reshape(-1)] if value is not None else [0])
    return out


def _merged_output(g: _Graph, name: str) -> str | None:
    """Context [B, N, S, H] -> Transpose 0,2,1,3 -> Reshape [B, S, D]: the Reshape's output."""
    users = g.consumers.get(name, [])
    if len(users) != 1 or users[0].op_type != "Transpose" or _perm(users[0]) != [0, 2, 1, 3]:
        return None
    after = g.consumers.get(users[0].output[0], [])
    if len(after) != 1 or after[0].op_type != "Reshape":
        return None
    return str(after[0].output[0])


def _match_attention(g: _Graph, softmax: onnx.NodeProto) -> dict[str, Any] | str:
    """One attention block around `softmax`, or why it does not match."""
    bias = ""
    scores = g.producer.get(softmax.input[0])
    if scores is not None and scores.op_type == "Add":
        mm = [i for i in scores.input if g.op(i, "MatMul")]
        if len(mm) != 1:
            return "Softmax input is an Add without a MatMul operand"
        bias = next(i for i in scores.input if i != mm[0])
        scores = g.producer[mm[0]]
    if scores is None or scores.op_type != "MatMul":
        return "Softmax is not fed by Q x K^T"
    q = _heads_input(g, scores.input[0], key=False)
    k = _heads_input(g, scores.input[1], key=True)
    if q is None or k is None:
        return "Q or K^T is not a head split of a [batch, sequence, hidden] tensor"
    probs = softmax.output[0]
    users = g.consumers.get(probs, [])
    nan_guard = [u for u in users if u.op_type == "IsNaN"]
    if nan_guard:  # SDPA's NaN -> 0 for fully masked rows: Where(IsNaN(p), 0, p)
        where = [u for u in users if u.op_type == "Where"]
        if len(where) != 1:
            return "unexpected consumers of the Softmax"
        probs = where[0].output[0]
        users = g.consumers.get(probs, [])
    if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != probs:
        return "Softmax output is not multiplied by V"
    v = _heads_input(g, users[0].input[1], key=False)
    if v is None:
        return "V is not a head split of a [batch, sequence, hidden] tensor"
    output = _merged_output(g, users[0].output[0])
    if output is None:
        return "the context is not merged back to [batch, sequence, hidden]"
    if q[2] != k[2]:
        return "Q and K head sizes differ"
    return {"query": q[0], "key": k[0], "value": v[0], "bias": bias, "output": output,
            "scale": q[1] * k[1], "head_size": q[2], "v_head_size": v[2]}


def _hidden_size(g: _Graph, name: str) -> int | None:
    """The last dimension of a projection output: the MatMul weight's columns."""
    node = g.producer.get(name)
    while node is not None and node.op_type == "Add":  # the projection bias
        node = next((g.producer[i] for i in node.input if i in g.producer), None)
    if node is None or node.op_type not in ("MatMul", "Gemm"):
        return None
    weight = g.constants.get(node.input[1])
    return int(weight.shape[-1]) if weight is not None and weight.ndim == 2 else None


def fuse_attention(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Rewrite each attention block that torch's `scaled_dot_product_attention` leaves in
    an exported graph (head split, scaled Q x K^T, additive mask, Softmax, NaN guard,
    x V, head merge) into one `com.microsoft.MultiHeadAttention` node taking the
    [batch, sequence, hidden] projections and the additive mask as `attention_bias`.
    ONNX Runtime's own fusion misses this form (its patterns are the TorchScript
    exporter's); its kernels (flash / memory-efficient attention) then run the node."""
    fused = onnx.ModelProto.FromString(model.SerializeToString())
    g = _Graph(fused)
    report: dict[str, Any] = {"fused": 0, "skipped": {}}
    new_nodes = []
    for softmax in [n for n in fused.graph.node if n.op_type == "Softmax"]:
        match = _match_attention(g, softmax)
        if isinstance(match, str):
            report["skipped"][softmax.name or softmax.output[0]] = match
            continue
        hidden = _hidden_size(g, match["query"])
        if hidden is None or hidden % match["head_size"]:
            report["skipped"][softmax.name] = "hidden size of Q not found from its projection"
            continue
        heads = hidden // match["head_size"]
        inputs = [match["query"], match["key"], match["value"], "", ""]
        if match["bias"]:
            inputs.append(match["bias"])
        new_nodes.append((match["output"], helper.make_node(
            "MultiHeadAttention", inputs, [match["output"]], domain="com.microsoft",
            name=f"MultiHeadAttention_{report['fused']}", num_heads=heads,
            scale=float(match["scale"]))))
        report["fused"] += 1
        report.setdefault("num_heads", heads)
        report.setdefault("head_size", match["head_size"])
    if not new_nodes:
        return fused, report
    replaced = {out for out, _ in new_nodes}
    kept = [n for n in fused.graph.node if not (set(n.output) & replaced)]
    kept.extend(node for _, node in new_nodes)  # ordered below
    del fused.graph.node[:]
    fused.graph.node.extend(_topological(kept, fused))
    _remove_dead(fused)
    if not any(o.domain == "com.microsoft" for o in fused.opset_import):
        fused.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused, report


def _topological(nodes: list[onnx.NodeProto], model: onnx.ModelProto) -> list[onnx.NodeProto]:
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    available.add("")
    ordered, pending = [], list(nodes)
    while pending:
        progress = [n for n in pending if all(i in available for i in n.input)]
        if not progress:
            raise BuildError("attention fusion left a cycle or a dangling input in the graph")
        for n in progress:
            available.update(n.output)
        ordered.extend(progress)
        ids = {id(n) for n in progress}
        pending = [n for n in pending if id(n) not in ids]
    return ordered


def _remove_dead(model: onnx.ModelProto) -> None:
    """Drop nodes (and initializers) no graph output depends on."""
    g = model.graph
    needed = {o.name for o in g.output}
    live = []
    for node in reversed(list(g.node)):
        if set(node.output) & needed:
            live.append(node)
            needed.update(i for i in node.input if i)
    live.reverse()
    del g.node[:]
    g.node.extend(live)
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)


# --- the CUDA engine's transformer cleanup -------------------------------------------------


def fuse_transformer(model_path: Path, out_path: Path, fp16: bool, use_gpu: bool = True,
                     num_heads: int = 0, hidden_size: int = 0) -> dict[str, Any]:
    """Write `model_path` with ORT's transformer fusions (and fp16 if asked) to `out_path`.

    First `fuse_attention` (torch SDPA blocks -> MultiHeadAttention), then ONNX Runtime's
    optimizer (SkipLayerNorm, BiasGelu, ...; its own Attention fusion for TorchScript-style
    graphs). `num_heads`/`hidden_size` 0: read off the graph. Returns the fusion report:
    contrib-op counts, whether attention fused, op counts before and after.
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    source = onnx.load(str(model_path))
    before = _op_counts(source)
    attention_model, attention = fuse_attention(source)
    if attention["fused"]:
        num_heads = num_heads or attention["num_heads"]
        hidden_size = hidden_size or attention["num_heads"] * attention["head_size"]
    try:
        # ORT's symbolic shape inference saves a temporary model into the working directory
        # when it cannot finish: keep that out of the caller's directory
        with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
            fused = optimizer.optimize_model(attention_model, model_type="bert",
                                             num_heads=num_heads, hidden_size=hidden_size,
                                             optimization_options=options, opt_level=0,
                                             use_gpu=use_gpu)
    except Exception as exc:
        raise BuildError(f"onnxruntime's transformer optimizer failed on {model_path}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    stats = {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}
    if fp16:
        # keep_io_types: the engine's inputs/outputs stay as the caller feeds them
        fused.convert_float_to_float16(keep_io_types=True)
    fused.save_model_to_file(str(out_path))
    after = _op_counts(fused.model)
    attention_nodes = sum(after.get(op, 0) for op in ATTENTION_OPS)
    return {"fused": stats, "attention_fused": attention_nodes > 0,
            "attention_nodes": attention_nodes, "sdpa_attention": attention,
            "softmax_left": after.get("Softmax", 0), "fp16": fp16,
            "ops_before": before, "ops_after": after,
            "nodes_before": sum(before.values()), "nodes_after": sum(after.values())}


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
