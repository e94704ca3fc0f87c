"""sdbuild's linear-time overflow check in coremltools' float16 pass answers as coremltools' own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdbuild import fp16_pass
from sdbuild.contract import Interface, TensorSpec
from sdbuild.package_io import package_digest, save_package
from sdbuild.stages.convert import convert_module


# coremltools 9's formula, as the oracle.
def coremltools_answer(value) -> bool:
    magnitude = np.abs(np.expand_dims(value, 0))
    return bool(np.max(magnitude[np.where(magnitude < 1e38)], initial=0.0) > 65504)


@pytest.mark.parametrize("value", [
    np.float32(3.0), np.float32(65504.0), np.float32(65505.0), np.float32(-7e4), np.float32(np.inf),
    np.array([1e38, -1e38, 9.9e37], np.float32), np.array([np.nan, 1.0], np.float32),
    np.array([[-np.inf, 1.0], [7e4, 2.0]], np.float32), np.zeros((0, 3), np.float32),
    np.random.default_rng(0).normal(0, 3e4, (4, 5, 3, 3)).astype(np.float32),
])
def test_the_overflow_check_agrees_with_coremltools(value):
    assert fp16_pass.holds_finite_beyond_fp16(value) == coremltools_answer(value)


class _Scaled(torch.nn.Module):
    """A conv whose weights fit float16, then a minimum with a constant that does not."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.register_buffer("limit", torch.tensor([7e4, 1.0, 2.0]).reshape(1, 3, 1, 1))

    def forward(self, x):
        return (torch.minimum(self.conv(x), self.limit),)


def test_packages_are_byte_identical_with_either_check(monkeypatch, tmp_path):
    interface = Interface(inputs=(TensorSpec("x", (1, 2, 8, 8), "float32"),),
                          outputs=(TensorSpec("y", (1, 3, 6, 6), "float32"),))
    torch.manual_seed(0)
    module = _Scaled().eval()
    ours = convert_module(module, interface, precision="float16", target="macOS13")
    save_package(ours, tmp_path / "ours.mlpackage")
    monkeypatch.setattr(fp16_pass, "holds_finite_beyond_fp16", coremltools_answer)
    theirs = convert_module(module, interface, precision="float16", target="macOS13")
    save_package(theirs, tmp_path / "theirs.mlpackage")
    assert package_digest(tmp_path / "ours.mlpackage") == package_digest(tmp_path / "theirs.mlpackage")
    program = str(ours._mil_program)
    (minimum,) = [line for line in program.splitlines() if "minimum(" in line]
    assert "fp32" in minimum and "conv(" in program and "fp16" in program, program  # only the overflowing op kept float32
