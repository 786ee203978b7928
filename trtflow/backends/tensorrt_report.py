"""The fusion report: which ONNX nodes became which TensorRT layers (kernels).

trtflow's own code because Polygraphy has no such report. It reads the engine
inspector's JSON (`ICudaEngine.create_engine_inspector()`, Python class
`tensorrt.EngineInspector`, C++ `IEngineInspector`; `get_engine_information(
LayerInformationFormat.JSON)` of an engine built at ProfilingVerbosity.DETAILED) and
maps each layer back to the ONNX nodes in its metadata. Pure logic: tested without TensorRT.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^|\]]+?)\s*(?:\|[^\]]*)?\]")


def onnx_nodes(path: Path) -> list[tuple[str, str]]:
    """(name, op type) of every node of an ONNX graph, in order."""
    import onnx

    return [(n.name, n.op_type) for n in onnx.load(str(path), load_external_data=False).graph.node]


def layer_onnx_nodes(layer: dict[str, Any]) -> list[str]:
    """The ONNX nodes one TensorRT layer runs, from its `Metadata` (DETAILED verbosity:
    `[ONNX Layer: a]\\x1f[ONNX Layer: b | ...]`), else from a fused name `a + b`."""
    metadata = str(layer.get("Metadata") or "")
    found = _ONNX_LAYER.findall(metadata)
    if found:
        return [name.strip() for name in found]
    name = str(layer.get("Name", ""))
    return [part.strip() for part in name.split(" + ")] if " + " in name else []


def _layer_precision(layer: dict[str, Any]) -> str:
    """Output data type: 10.x writes `Format/Datatype`, 11.x splits it into `DataType`."""
    outputs = layer.get("Outputs") or []
    if not outputs or not isinstance(outputs[0], dict):
        return "unknown"
    first = outputs[0]
    return str(first.get("DataType") or first.get("Format/Datatype") or "unknown")


def fusion_report(info: dict[str, Any], onnx_nodes: list[tuple[str, str]]) -> dict[str, Any]:
    """Which ONNX nodes became which TensorRT layers (kernels), from the inspector's JSON."""
    layers = info.get("Layers", [])
    op_of = dict(onnx_nodes)
    rows, covered = [], set()
    for layer in layers:
        if not isinstance(layer, dict):  # ProfilingVerbosity below DETAILED: names only
            layer = {"Name": str(layer)}
        nodes = layer_onnx_nodes(layer)
        covered.update(nodes)
        rows.append({"layer": layer.get("Name", ""), "type": layer.get("LayerType", "unknown"),
                     "tactic": layer.get("TacticName", ""), "precision": _layer_precision(layer),
                     "onnx_nodes": nodes, "onnx_ops": [op_of.get(n, "?") for n in nodes]})
    fused = [r for r in rows if len(r["onnx_nodes"]) > 1]
    patterns = Counter(" + ".join(r["onnx_ops"]) for r in fused)
    unmapped = [n for n, op in onnx_nodes if n not in covered and op != "Constant"]
    return {
        "layers": len(rows),
        "onnx_nodes": len(onnx_nodes),
        "fused_layers": len(fused),
        "fusion_patterns": dict(patterns.most_common()),
        "layer_types": dict(Counter(str(r["type"]) for r in rows).most_common()),
        "precisions": dict(Counter(r["precision"] for r in rows).most_common()),
        # folded into constants, fused without metadata, or removed as no-ops
        "unmapped_onnx_nodes": len(unmapped),
        "unmapped_examples": unmapped[:20],
        "io_tensors": info.get("I/O Tensors", info.get("Bindings", [])),
        "rows": rows,
    }
