"""`trtflow` as a user runs it: a real subprocess, exit codes and messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from ..unit.tiny import conv_bn_graph
from .conftest import write_params

pytestmark = pytest.mark.integration


def trtflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trtflow.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())


def test_help_explains_each_command(tmp_path: Path) -> None:
    res = trtflow("--help", cwd=tmp_path)
    assert res.returncode == 0
    for command in ("run", "stage", "prepare"):
        assert command in res.stdout
    commands = [line.split()[1] for line in res.stdout.split("Commands")[1].splitlines()
                if line.startswith("│ ") and line.split()[1][0].isalpha()]
    assert commands[0] == "run"  # what a new user needs first


def test_version_and_did_you_mean(tmp_path: Path) -> None:
    from importlib.metadata import version

    assert trtflow("--version", cwd=tmp_path).stdout.strip() == f"trtflow {version('trtflow')}"
    typo = trtflow("rn", cwd=tmp_path)
    assert typo.returncode == 2 and "Did you mean 'run'?" in typo.stderr


def test_missing_params_file(tmp_path: Path) -> None:
    res = trtflow("run", "params/nope.yaml", cwd=tmp_path)
    assert res.returncode == 2
    assert "params file params/nope.yaml does not exist" in res.stderr
    assert "run trtflow from the project directory" in res.stderr and "--root" in res.stderr
    assert not (tmp_path / ".trtflow").exists()  # a wrong directory is left as it was
    assert "Traceback" not in res.stderr


def test_data_path_outside_the_project_names_root_and_leaves_no_state(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "model: {name: digits, source: {builtin: digits}}\n"
        "data: {calibration: {npz: data/digits/calibration.npz}}\n"
        "targets: {fp32: {precision: fp32}}\n")
    for args in (["run", "p.yaml"], ["stage", "export", "--params", "p.yaml"]):
        res = trtflow(*args, cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        message = " ".join(res.stderr.split())
        assert f"data file {tmp_path}/data/digits/calibration.npz does not exist" in message
        assert "relative to the project directory" in message and "--root" in message
        assert not (tmp_path / ".trtflow").exists()  # nothing written, nothing left


def test_fetch_by_registry_version_outside_a_project_says_where_it_looked(
        tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # a user's
    res = subprocess.run([sys.executable, "-m", "trtflow.cli", "fetch", "digits", "1", "-t",
                          "int8", "out", "--bucket", "my-engines"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 2, res.stderr
    message = " ".join(res.stderr.split())
    assert f"--target reads the registry, and {tmp_path} has none" in message
    assert "--root" in message and not (tmp_path / ".trtflow").exists()


def test_malformed_params_file(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("model: {name: x, source: {builtin: digits}\n")
    res = trtflow("run", "p.yaml", cwd=tmp_path)
    assert res.returncode == 2 and "p.yaml: not valid YAML" in res.stderr


def test_unknown_model_name(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("model: {name: x, source: {builtin: vgg}}\n")
    res = trtflow("run", "p.yaml", cwd=tmp_path)
    assert res.returncode == 2 and "model.source.builtin" in res.stderr and "vgg" in res.stderr


def test_corrupt_onnx_source_fails_before_any_stage(tmp_path: Path) -> None:
    data = conv_bn_graph().SerializeToString()
    (tmp_path / "m.onnx").write_bytes(data[:100])
    (tmp_path / "p.yaml").write_text("model: {name: m, source: {onnx: m.onnx}}\n")
    res = trtflow("run", "p.yaml", cwd=tmp_path)
    assert res.returncode == 2
    assert "m.onnx is corrupt or truncated" in res.stderr
    assert not (tmp_path / ".trtflow" / "store").exists()


def test_onnx_source_compiles_end_to_end(tmp_path: Path) -> None:
    onnx.save(conv_bn_graph(), tmp_path / "m.onnx")
    (tmp_path / "p.yaml").write_text(
        "model: {name: tiny-onnx, source: {onnx: m.onnx}}\n"
        "validate: {warmup: 1, iterations: 5, batch_sizes: [1, 4]}\n")
    res = trtflow("run", "p.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "tiny-onnx" in res.stdout and "pass" in res.stdout
    # the baseline's long label is shown in MLflow tags and progress lines, not as a warning
    assert not [line for line in res.stderr.splitlines()
                if "ONNX Runtime FP32 on the source graph" in line and "validate" not in line]


def test_gate_failure_exits_3_with_numbers(digits_root: Path) -> None:
    path = write_params(digits_root, validate={"gates": {"min_speedup": 500.0}})
    res = trtflow("run", str(path), cwd=digits_root)
    assert res.returncode == 3, res.stderr
    assert "failed validation: min_speedup: measured" in res.stderr
    assert "allowed 500" in res.stderr


def test_stage_command_copies_artifact_for_dvc(digits_root: Path) -> None:
    path = write_params(digits_root)
    res = trtflow("stage", "cleanup", "--params", str(path), cwd=digits_root)
    assert res.returncode == 0, res.stderr
    out = digits_root / "build" / "digits" / "cleanup"
    assert (out / "model.clean.onnx").is_file() and (out / "cleanup_report.json").is_file()
    res = trtflow("stage", "bogus", "--params", str(path), cwd=digits_root)
    assert res.returncode == 2 and "unknown stage 'bogus'" in res.stderr


def test_console_script_imports_a_factory_from_the_project_without_pythonpath(
        tmp_path: Path) -> None:
    """The README's `examples.train_sensor:make_model` from the `trtflow` console script
    (whose sys.path, unlike `python -m`'s, has no current directory of its own)."""
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "__init__.py").write_text("")
    (tmp_path / "nets" / "tiny.py").write_text(
        "import torch\n\ndef make_model():\n    return torch.nn.Linear(4, 2)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([str(Path(sys.executable).parent / "trtflow"), "init",
                          "nets.tiny:make_model", "-o", "p.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "p.yaml").read_text()
    assert "name: tiny" in text and "weights: none" in text and "Linear" not in res.stderr
