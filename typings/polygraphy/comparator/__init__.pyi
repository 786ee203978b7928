# polygraphy/comparator: struct.py (IterationResult, RunResults, AccuracyResult(s)),
# compare.py (SimpleCompareFunc, OutputCompareResult), comparator.py (Comparator)
from collections.abc import Mapping

import numpy as np

class IterationResult:
    def __init__(self, outputs: Mapping[str, np.ndarray] | None = None,
                 runtime: float | None = None, runner_name: str | None = None) -> None: ...

class RunResults:
    def __init__(self, lst: list[tuple[str, list[IterationResult]]] | None = None) -> None: ...

class OutputCompareResult:
    max_absdiff: float
    max_reldiff: float
    def __bool__(self) -> bool: ...

class AccuracyResult:
    # (runner0, runner1) -> one {output name: result} per iteration
    def __getitem__(self, key: tuple[str, str]) -> list[dict[str, OutputCompareResult]]: ...
    def __bool__(self) -> bool: ...

class AccuracyResults:
    def __getitem__(self, index: int) -> AccuracyResult: ...
    def __bool__(self) -> bool: ...

class SimpleCompareFunc:
    def __init__(self, check_shapes: bool | None = None, rtol: float | None = None,
                 atol: float | None = None, fail_fast: bool | None = None, *,
                 check_error_stat: str | None = None) -> None: ...

class Comparator:
    @staticmethod
    def compare_accuracy(run_results: RunResults, fail_fast: bool = False,
                         comparisons: list[tuple[int, int]] | None = None,
                         compare_func: SimpleCompareFunc | None = None) -> AccuracyResults: ...
