"""The absolute accuracy floor (issue 18, class 9), decided on given numbers."""

from __future__ import annotations

import pytest

from trtflow.params import Gates
from trtflow.stages.validate import accuracy_floor, check_gates
from trtflow.stages.validation_report import Quality


def _quality(accuracy: float, reference: float, majority: float = 0.1) -> Quality:
    return Quality(samples=100, metric="top1", max_abs_error=0.0, mean_abs_error=0.0,
                   agreement=1.0, labelled=True, accuracy=accuracy,
                   reference_accuracy=reference, majority_fraction=majority)


def test_an_untrained_model_agreeing_with_itself_fails_the_floor() -> None:
    gates = check_gates(_quality(0.10, 0.10), None, Gates())
    assert not gates.passed
    failed = [d.gate for d in gates.failed]
    assert failed == ["min_accuracy"]  # every relative gate passes


@pytest.mark.parametrize(("majority", "floor"), [(0.1, 0.28), (0.5, 0.6), (0.9, 0.92)])
def test_default_floor_is_a_fifth_of_the_way_from_chance(majority: float, floor: float) -> None:
    assert accuracy_floor(_quality(0.5, 0.5, majority), Gates()) == pytest.approx(floor)


def test_explicit_floor_and_off_switch() -> None:
    assert accuracy_floor(_quality(0.5, 0.5), Gates(min_accuracy=0.9)) == 0.9
    assert accuracy_floor(_quality(0.1, 0.1), Gates(min_accuracy=0.0)) is None
    assert check_gates(_quality(0.1, 0.1), None, Gates(min_accuracy=0.0)).passed


def test_no_labels_no_floor() -> None:
    unlabelled = Quality(samples=4, metric="cosine", max_abs_error=0.0, mean_abs_error=0.0,
                         agreement=1.0, labelled=False)
    assert accuracy_floor(unlabelled, Gates()) is None
