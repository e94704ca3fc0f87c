"""sdbuild's faster coremltools pass machinery (`sdbuild.fast_passes`) gives coremltools' own
answers and programs, and still catches a broken program."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdbuild import fast_passes
from sdbuild.contract import Interface, TensorSpec
from sdbuild.package_io import package_digest, save_package
from sdbuild.quiet import import_coremltools
from sdbuild.stages.convert import convert_module


# coremltools 9's formula, as the oracle.
def coremltools_answer(value) -> bool:
    magnitude = np.abs(np.expand_dims(value, 0))
    return bool(np.max(magnitude[np.where(magnitude < 1e38)], initial=0.0) > 65504)


@pytest.mark.parametrize("value", [
    np.float32(3.0), np.float32(65504.0), np.float32(65505.0), np.float32(-7e4), np.float32(np.inf),
    np.array([1e38, -1e38, 9.9e37], np.float32), np.array([np.nan, 1.0], np.float32),
    np.array([np.nan, 7e4], np.float32), np.array([np.nan, np.nan], np.float32),
    np.array([[-np.inf, 1.0], [7e4, 2.0]], np.float32), np.zeros((0, 3), np.float32),
    np.random.default_rng(0).normal(0, 3e4, (4, 5, 3, 3)).astype(np.float32),
    np.random.default_rng(1).normal(0, 1, (64, 64)).astype(np.float32),
])
def test_the_overflow_check_agrees_with_coremltools(value):
    assert fast_passes.holds_finite_beyond_fp16(value) == coremltools_answer(value)


class _Block(torch.nn.Module):
    """A conv whose weights fit float16, a minimum with a constant that does not, a constant that
    underflows float16, then a layer norm and an attention-like matmul (so the fusion and
    transpose passes have work)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.register_buffer("limit", torch.tensor([7e4, 1.0, 2.0]).reshape(1, 3, 1, 1))
        self.register_buffer("tiny", torch.tensor([1e-9, 0.5, -1e-9]).reshape(1, 3, 1, 1))
        self.norm = torch.nn.LayerNorm(3)
        self.proj = torch.nn.Linear(3, 3)

    def forward(self, x):
        h = (torch.minimum(self.conv(x), self.limit) * self.tiny).flatten(2).transpose(1, 2)  # (1, 36, 3)
        q = self.proj(self.norm(h))
        return (torch.softmax(q @ h.transpose(1, 2), dim=-1) @ h,)


def _converted_digest(folder, name):
    interface = Interface(inputs=(TensorSpec("x", (1, 2, 8, 8), "float32"),),
                          outputs=(TensorSpec("y", (1, 36, 3), "float32"),))
    torch.manual_seed(0)
    model = convert_module(_Block().eval(), interface, precision="float16", target="macOS13")
    save_package(model, folder / f"{name}.mlpackage")
    return package_digest(folder / f"{name}.mlpackage"), str(model._mil_program)


def test_packages_are_byte_identical_with_coremltools_own_passes(monkeypatch, tmp_path):
    ours, program = _converted_digest(tmp_path, "ours")
    assert len(fast_passes.REPLACED) == 4
    for (owner, attribute), coremltools_own in fast_passes.REPLACED.items():
        monkeypatch.setattr(owner, attribute, coremltools_own)
    theirs, _ = _converted_digest(tmp_path, "theirs")
    assert ours == theirs
    (minimum,) = [line for line in program.splitlines() if "minimum(" in line]
    assert "fp32" in minimum and "conv(" in program and "fp16" in program, program  # only the overflowing op kept float32


def test_the_pipeline_still_catches_a_broken_program():
    import_coremltools()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipeline
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY, register_pass

    name = "sdbuild_test::orphan_internal_var"
    if name not in PASS_REGISTRY:
        @register_pass(namespace="sdbuild_test")
        class orphan_internal_var(AbstractGraphPass):  # breaks an invariant Block.validate checks
            def apply(self, prog):
                block = prog.functions["main"]
                block._internal_vars.add(block.operations[0].outputs[0])

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))])
    def prog(x):
        return mb.relu(x=mb.add(x=x, y=np.float32(1)))

    with pytest.raises(ValueError, match="internal vars"):
        # the broken pass is neither last nor followed by dead-code elimination right away
        fast_passes.apply_pipeline(prog, PassPipeline([name, "common::noop_elimination", "common::const_elimination"], "test"))
