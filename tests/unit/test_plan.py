"""The stage plan, declared once: its DAG, keys derived from declarations, a torch-free
cached run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from trtflow import stage as stage_mod
from trtflow.context import Context
from trtflow.errors import ParamsError
from trtflow.params import Params, load_params
from trtflow.plan import BUILD, CALIBRATE, CLEANUP, EXPORT, STEPS, VALIDATE, plan, run_up_to
from trtflow.stage import StageResult, step_key

from .tiny import conv_bn_graph

ROOT = Path(__file__).resolve().parents[2]


def _params(**targets: dict) -> Params:
    return Params.model_validate({
        "model": {"name": "tiny", "source": {"onnx": "m.onnx"}},
        "targets": targets or {"fp32": {}, "int8": {"precision": "int8"},
                               "int8-u8": {"precision": "int8", "int8_activations": "uint8"}},
    })


def test_plan_orders_stages_and_shares_one_calibration() -> None:
    stages = plan(_params(), ["fp32", "int8", "int8-u8"])
    labels = [n.label for n in stages]
    assert labels == ["export", "cleanup", "build [fp32]", "validate [fp32]", "calibrate",
                      "build [int8]", "validate [int8]", "build [int8-u8]",
                      "validate [int8-u8]"]
    assert stages.node("build", "int8").upstream == (stages.node("cleanup"),
                                                     stages.node("calibrate"))
    assert stages.node("build", "fp32").upstream == (stages.node("cleanup"),)
    assert [n.label for n in stages.of_target("int8")] == ["calibrate", "build [int8]",
                                                            "validate [int8]"]
    assert stages.shown_as(stages.node("calibrate")) == "int8, int8-u8"
    assert stages.shown_as(stages.node("export")) == ""


def test_plan_of_fp32_only_has_no_calibration() -> None:
    stages = plan(_params(fp32={}), ["fp32"])
    assert "calibrate" not in [n.step.name for n in stages]
    with pytest.raises(ParamsError, match="'calibrate' is not part of this plan"):
        stages.up_to("calibrate")
    with pytest.raises(ParamsError, match="target 'gpu' is not defined"):
        plan(_params(fp32={}), ["gpu"])


def test_every_step_declares_the_libraries_that_shape_its_output() -> None:
    assert {"onnxslim", "onnxscript", "onnx-ir"} <= set(CLEANUP.libraries)
    assert {"torch", "onnxscript", "onnx-ir"} <= set(EXPORT.libraries)
    assert set(STEPS) == {"export", "cleanup", "calibrate", "build", "validate"}
    assert all(step.version for step in STEPS.values())


def _key(step: stage_mod.Step, params: Params, tmp_path: Path, target: str | None = None) -> str:
    ctx = Context.create(params, tmp_path)
    upstream = [StageResult(stage="u", version="1", key="k", path=str(tmp_path), digest="d",
                            report={}, seconds=0.0)]
    return step_key(step, ctx, target, upstream)


def test_a_library_upgrade_changes_only_the_keys_of_the_steps_that_declare_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = _params(fp32={})
    before = {s: _key(s, params, tmp_path, "fp32") for s in (CLEANUP, BUILD)}
    real = stage_mod.library_version
    monkeypatch.setattr(stage_mod, "library_version",
                        lambda lib: "99.0" if lib == "onnxslim" else real(lib))
    assert _key(CLEANUP, params, tmp_path) != before[CLEANUP]
    assert _key(BUILD, params, tmp_path, "fp32") == before[BUILD]


def test_a_param_changes_only_the_keys_of_the_steps_that_read_it(tmp_path: Path) -> None:
    (tmp_path / "data.npz").write_bytes(b"x")
    base = _params().model_dump(by_alias=True)
    base["data"] = {"calibration": {"npz": "data.npz"}}
    changed = {**base, "validate": {**base["validate"], "batch_sizes": [1, 8]}}
    a, b = Params.model_validate(base), Params.model_validate(changed)
    assert _key(CALIBRATE, a, tmp_path) == _key(CALIBRATE, b, tmp_path)
    assert _key(BUILD, a, tmp_path, "int8") == _key(BUILD, b, tmp_path, "int8")
    targets = {**base["targets"], "int8": {**base["targets"]["int8"], "threads": 1}}
    c = Params.model_validate({**base, "targets": targets})
    assert _key(BUILD, a, tmp_path, "int8") != _key(BUILD, c, tmp_path, "int8")
    assert _key(BUILD, a, tmp_path, "fp32") == _key(BUILD, c, tmp_path, "fp32")


def test_the_demo_params_plan_every_target() -> None:
    params = load_params(ROOT / "params" / "digits.yaml")
    stages = plan(params, list(params.targets))
    assert {n.target for n in stages if n.step is VALIDATE} == set(params.targets)


CACHED_RUN = textwrap.dedent("""
    import sys
    from pathlib import Path
    from trtflow.context import Context
    from trtflow.params import load_params
    from trtflow.plan import run_up_to

    root = Path(sys.argv[1])
    results = run_up_to(Context.create(load_params(root / "p.yaml"), root), "validate", "int8")
    print(sum(r.cached for r in results), len(results), "torch" in sys.modules)
""")


def test_a_cached_run_imports_no_torch(tmp_path: Path) -> None:
    onnx.save_model(conv_bn_graph(), str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((16, 3, 8, 8)).astype(np.float32))
    (tmp_path / "p.yaml").write_text(textwrap.dedent("""
        model: {name: tiny, source: {onnx: m.onnx}}
        data: {calibration: {npz: cal.npz}, batch_size: 8}
        targets: {int8: {precision: int8}}
        validate: {batch_sizes: [1], warmup: 1, iterations: 3}
    """))

    def run() -> list[str]:
        done = subprocess.run([sys.executable, "-c", CACHED_RUN, str(tmp_path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert run()[:2] == ["0", "5"]  # export, cleanup, calibrate, build, validate ran
    assert run() == ["5", "5", "False"]  # all five cached, and torch never imported


def test_run_up_to_gives_the_keys_the_plan_derives(tmp_path: Path) -> None:
    onnx.save_model(conv_bn_graph(), str(tmp_path / "m.onnx"))
    ctx = Context.create(_params(fp32={}), tmp_path)
    results = run_up_to(ctx, "build", "fp32")
    assert [r.stage for r in results] == ["export", "cleanup", "build"]
    stages = plan(ctx.params, ["fp32"])
    key = step_key(BUILD, ctx, "fp32", results[1:2])
    assert results[-1].key == key and stages.node("build", "fp32").step is BUILD


def test_dvc_yaml_names_every_params_section_each_step_reads() -> None:
    """dvc.yaml is the same plan for `dvc repro`: a param a step's key reads but DVC does
    not watch would leave DVC's stage 'up to date' while the store key changed."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, step in STEPS.items():
        body = stages[name].get("do", stages[name])
        watched = [key.replace("${key}", "T").replace("${item}", "T")
                   for entry in body["params"] for keys in entry.values() for key in keys]
        for read in step.sections("T"):
            assert any(read == w or read.startswith(f"{w}.") for w in watched), (name, read)


def test_every_params_key_dvc_yaml_watches_is_present_in_the_params_file() -> None:
    """DVC fails a stage whose params key is missing from the file ("Parameters
    'export.samples' are missing"), even when the schema gives it a default."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        keys = stage["foreach"] if "foreach" in stage else [None]
        for entry in body["params"]:
            for file, watched in entry.items():
                values = yaml.safe_load((ROOT / file).read_text())
                for item in keys:
                    for key in watched:
                        key = key.replace("${key}", str(item)).replace("${item}", str(item))
                        node = values
                        for part in key.split("."):
                            assert isinstance(node, dict) and part in node, (name, file, key)
                            node = node[part]


def test_the_validate_step_reports_its_progress(tmp_path: Path) -> None:
    onnx.save_model(conv_bn_graph(), str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ev.npz", x=rng.standard_normal((8, 3, 8, 8)).astype(np.float32))
    (tmp_path / "p.yaml").write_text(textwrap.dedent("""
        model: {name: tiny, source: {onnx: m.onnx}}
        data: {evaluation: {npz: ev.npz}, batch_size: 4}
        targets: {fp32: {}}
        validate: {batch_sizes: [1], warmup: 1, iterations: 3}
    """))
    ctx = Context.create(load_params(tmp_path / "p.yaml"), tmp_path)
    lines: list[str] = []
    ctx.progress = lines.append
    run_up_to(ctx, "validate", "fp32")
    assert any(line.startswith("validate quality") for line in lines), lines
    assert any(line.startswith("validate latency") for line in lines), lines
