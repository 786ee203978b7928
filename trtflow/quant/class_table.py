"""A fixed calibration method per tensor class: `method: auto`'s accuracy at entropy's cost.

`method: auto` (``quant.method_search``) scores entropy, max and percentile for each tensor
class on the selection split: 3 + 2 x classes fake-quantized evaluations, 4-7x the stage
time of entropy alone. On the seeded models of ``bench/layer_precision.py`` its choices
were nearly always the same table: percentile (99.99) for every class (ReLU and swish
outputs, gates, products, residual sums, pools, inputs) and entropy or max for the raw
outputs of linear layers (convolution / MatMul outputs feeding the next layer's Q/DQ;
auto's linear pick varied: entropy on efficientnet-b0, max on mobilenet_v3_large,
percentile on the others, where the three tie).
Held-out cosine (32 samples) of the TensorRT-placed Q/DQ graph, 64 calibration samples:

================  =======  =======  ==========  ======  ===========
model             entropy  max      percentile  auto    this table
================  =======  =======  ==========  ======  ===========
efficientnet-b0   0.8424   0.9828   0.9881      0.9876  0.9878
mobilenet_v3_l    0.8409   0.9171   0.9170      0.9345  0.9298
regnety-800mf     0.9996   0.9998   0.9998      0.9998  0.9998
resnet18          0.9998   0.9998   0.9998      0.9998  0.9998
distilbert-shaped 0.99985  0.99984  0.99987     0.99987 0.99987
================  =======  =======  ==========  ======  ===========

(entropy's stage time 11-38 s, auto's 49-106 s, on the loaded 2-core host.) Percentile
alone matches the table on four models but loses on mobilenet_v3_large (0.9170), where
the linear outputs need a wider range than 99.99 % of the values. The table
needs the entropy and percentile amax only (both read the one histogram pass) and no
evaluation, so it costs what entropy costs. ``class_methods`` gives each tensor its
method; graph inputs keep ``input_method`` as the caller decides (``fixed``).
It is ``calibration.method: classwise``, the default (trtflow.stages.calibrate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

from trtflow.quant.amax_table import CLASSWISE_METHODS
from trtflow.quant.method_search import tensor_class

# class -> method; every class not named takes DEFAULT_METHOD
CLASS_TABLE: dict[str, str] = {"linear": "entropy"}
DEFAULT_METHOD = "percentile"
METHODS = CLASSWISE_METHODS  # the amax a calibration with this table needs


def class_methods(model: onnx.ModelProto, tensors: Sequence[str],
                  fixed: Mapping[str, str] | None = None,
                  table: Mapping[str, str] | None = None) -> dict[str, str]:
    """tensor -> method: ``fixed`` where given (graph inputs' ``input_method``), else the
    method of the tensor's class (``tensor_class``) in `table` (default ``CLASS_TABLE``),
    else ``DEFAULT_METHOD``."""
    of = tensor_class(model)
    chosen = CLASS_TABLE if table is None else table
    given = fixed or {}
    return {t: given.get(t) or chosen.get(of(t), DEFAULT_METHOD) for t in tensors}
