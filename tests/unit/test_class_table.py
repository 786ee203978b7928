"""The fixed per-class calibration table: each tensor's method from its producer's class."""

from __future__ import annotations

from trtflow.quant.class_table import CLASS_TABLE, DEFAULT_METHOD, METHODS, class_methods

from .test_layer_precision import _residual_graph


def test_linear_outputs_take_entropy_and_every_other_class_percentile() -> None:
    model = _residual_graph()  # x -> conv a -> Relu -> conv b -> Add(x) -> Relu -> Mul -> conv c
    methods = class_methods(model, ["x", "a", "ra", "b", "s", "rs", "m"])
    assert methods == {"x": "percentile", "a": "entropy", "ra": "percentile",
                       "b": "entropy", "s": "percentile", "rs": "percentile",
                       "m": "percentile"} and DEFAULT_METHOD == "percentile"


def test_fixed_tensors_and_a_given_table_win() -> None:
    model = _residual_graph()
    assert class_methods(model, ["x", "a"], fixed={"x": "max"}) == {"x": "max",
                                                                     "a": "entropy"}
    assert class_methods(model, ["a", "s"], table={"residual": "max"}) == {
        "a": "percentile", "s": "max"}


def test_the_table_reads_only_the_methods_a_classwise_calibration_computes() -> None:
    assert {*CLASS_TABLE.values(), DEFAULT_METHOD} == set(METHODS)
