"""Model sources that would fail later with a misleading message (issue 25 item 5): a
symlinked external-data file, a module on the `meta` device, a BatchNorm with a negative
running variance."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from trtflow.errors import ModelError
from trtflow.sources import check_module, check_onnx_file

from .tiny import conv_bn_graph


def test_a_symlinked_external_data_file_is_named_as_a_link(tmp_path: Path) -> None:
    onnx.save_model(conv_bn_graph(), tmp_path / "m.onnx", save_as_external_data=True,
                    location="m.weights", size_threshold=0)
    real = tmp_path / "elsewhere.bin"
    (tmp_path / "m.weights").rename(real)
    (tmp_path / "m.weights").symlink_to(real)
    with pytest.raises(ModelError, match=r"keeps its data in m.weights, which is a symlink to "
                       r".*elsewhere.bin; ONNX refuses external data through links") as err:
        check_onnx_file(tmp_path / "m.onnx")
    assert "corrupt" not in str(err.value)


def test_a_module_on_the_meta_device_is_refused_naming_a_tensor() -> None:
    with torch.device("meta"):
        module = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(ModelError, match=r"on the 'meta' device \(2 tensor\(s\) without data, "
                       r"e.g. '0.weight'\)"):
        check_module(module, "model.source.factory 'f:make'")


def test_a_negative_batchnorm_variance_names_the_module_and_value() -> None:
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3))
    module[1].running_var[1] = -0.5
    with pytest.raises(ModelError, match=r"BatchNorm '1' has a negative running variance "
                       r"\(-0.5 at channel 1; 1 of 3 channels negative\)"):
        check_module(module.eval(), "model.source.factory 'f:make'")


def test_a_sound_module_passes() -> None:
    check_module(torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3)), "x")
