"""Evaluator vs PyTorch on the tiny UNet of every architecture.

Each architecture is converted for a different deployment target. sdbuild's UNets spell attention
out as matmul + softmax (as Apple's converter does) for every target, so coremltools emits no
``scaled_dot_product_attention`` op for them even at iOS18; that op, which other converters'
packages hold, is checked on a module of its own.
"""

from __future__ import annotations

import pytest

from synthetic_components import synthetic_component

from sdbuild.evaluator import ProgramEvaluator
from sdbuild.metrics import psnr
from sdbuild.sample_inputs import sample_inputs
from sdbuild.stages.convert import convert_module
from sdbuild.stages.trace import reference_outputs

CASES = [
    ("tiny-sd15", "iOS16"),
    ("tiny-sd21-base", "iOS17"),
    ("tiny-sd21", "iOS18"),
    ("tiny-sdxl-base", "iOS18"),
]


def op_list(model) -> list[str]:
    function = model.get_spec().mlProgram.functions["main"]
    return [op.type for op in function.block_specializations[function.opset].operations]


# One conversion per case serves every check of it: a tiny UNet takes most of a minute to convert.
@pytest.mark.parametrize("arch, target", CASES, ids=[f"{a}-{t}" for a, t in CASES])
def test_unet_matches_pytorch_and_float32_mode_fuses_its_attention(arch, target):
    module, interface = synthetic_component(arch, "unet", latent=8, batch=2)
    model = convert_module(module, interface, precision="float16", target=target)
    ops = op_list(model)
    assert "softmax" in ops

    inputs = sample_inputs(interface, seed=1)
    reference = reference_outputs(module, interface, inputs)["noise_pred"]
    device = ProgramEvaluator(model, fp16_storage=True).predict(inputs)["noise_pred"]
    exact_evaluator = ProgramEvaluator(model)
    exact = exact_evaluator.predict(inputs)["noise_pred"]

    assert device.dtype.name == exact.dtype.name == "float32"
    assert psnr(reference, device) >= 35.0
    # float32 math on float16 weights: only the weights' rounding remains.
    assert psnr(reference, exact) >= 55.0
    assert psnr(reference, exact) > psnr(reference, device)
    fused = sum(s.op_type == "matmul+softmax+matmul" for s in exact_evaluator._steps)
    assert fused == ops.count("softmax") > 0


def test_scaled_dot_product_attention_op_matches_pytorch():
    import torch
    import torch.nn.functional as F

    from sdbuild.contract import Interface, TensorSpec

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return (F.scaled_dot_product_attention(q, k, v),)

    shape = (2, 4, 16, 8)
    interface = Interface(inputs=tuple(TensorSpec(n, shape, "float32") for n in ("q", "k", "v")),
                          outputs=(TensorSpec("out", shape, "float32"),))
    module = Attention().eval()
    model = convert_module(module, interface, precision="float16", target="iOS18")
    assert "scaled_dot_product_attention" in set(op_list(model))
    inputs = sample_inputs(interface, seed=3)
    reference = reference_outputs(module, interface, inputs)["out"]
    assert psnr(reference, ProgramEvaluator(model).predict(inputs)["out"]) >= 55.0
