"""The absolute accuracy floor (issue 18, class 9), decided on given numbers."""

from __future__ import annotations

import pytest

from trtflow.params import Gates
from trtflow.stages.validate import accuracy_floor, check_gates


def _quality(accuracy: float, reference: float, majority: float = 0.1) -> dict:
    return {"labelled": True, "accuracy": accuracy, "reference_accuracy": reference,
            "agreement": 1.0, "majority_fraction": majority}


def test_an_untrained_model_agreeing_with_itself_fails_the_floor() -> None:
    gates = check_gates(_quality(0.10, 0.10), None, Gates())
    assert not gates["passed"]
    failed = [d["gate"] for d in gates["decisions"] if not d["passed"]]
    assert failed == ["min_accuracy"]  # every relative gate passes


@pytest.mark.parametrize(("majority", "floor"), [(0.1, 0.28), (0.5, 0.6), (0.9, 0.92)])
def test_default_floor_is_a_fifth_of_the_way_from_chance(majority: float, floor: float) -> None:
    assert accuracy_floor(_quality(0.5, 0.5, majority), Gates()) == pytest.approx(floor)


def test_explicit_floor_and_off_switch() -> None:
    assert accuracy_floor(_quality(0.5, 0.5), Gates(min_accuracy=0.9)) == 0.9
    assert accuracy_floor(_quality(0.1, 0.1), Gates(min_accuracy=0.0)) is None
    assert check_gates(_quality(0.1, 0.1), None, Gates(min_accuracy=0.0))["passed"]


def test_no_labels_no_floor() -> None:
    assert accuracy_floor({"labelled": False, "agreement": 1.0}, Gates()) is None
