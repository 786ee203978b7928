"""`trtflow stage` default outputs: one folder per target where the plan runs a stage
once per target (a decoder's weight-only calibrate), else one per model."""

from __future__ import annotations

from pathlib import Path

from trtflow.dvc_stage import default_output
from trtflow.params import load_params
from trtflow.plan import steps_for

ROOT = Path(__file__).resolve().parents[2]


def test_calibrate_output_is_per_target_only_where_the_plan_says_so(tmp_path: Path) -> None:
    digits = steps_for(load_params(ROOT / "params" / "digits.yaml"))
    decoder = steps_for(load_params(ROOT / "params" / "smollm2.yaml"))
    assert not digits["calibrate"].per_target
    assert decoder["calibrate"].per_target
    cnn = default_output(tmp_path, "digits", "calibrate", "int8", digits["calibrate"].per_target)
    llm = [default_output(tmp_path, "smollm2", "calibrate", t, decoder["calibrate"].per_target)
           for t in ("int8", "int4")]
    assert cnn == tmp_path / "build" / "digits" / "calibrate"
    assert llm == [tmp_path / "build" / "smollm2" / "calibrate-int8",
                   tmp_path / "build" / "smollm2" / "calibrate-int4"]
    assert default_output(tmp_path, "digits", "build", "int8", True).name == "build-int8"
