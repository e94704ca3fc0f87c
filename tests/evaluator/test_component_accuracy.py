"""Evaluator vs PyTorch on tiny VAE decoders/encoders, CLIP text encoders and SPLIT_EINSUM UNets.

In fp16 mode (float16 storage, as on device) the contract's 35 dB gate must hold. In float32
mode a float16-precision artifact still carries float16 weights and constants, which bounds the
match; a float32-precision artifact must match PyTorch to float32 rounding.
"""

from __future__ import annotations

import pytest

from synthetic_components import synthetic_component

from sdbuild.evaluator import ProgramEvaluator
from sdbuild.metrics import psnr
from sdbuild.sample_inputs import sample_inputs
from sdbuild.stages.convert import convert_module
from sdbuild.stages.trace import reference_outputs

FP16_GATE_DB = 35.0
FP16_WEIGHTS_FP32_MATH_DB = 55.0
FP32_ARTIFACT_DB = 90.0

CASES = [
    # (arch, component, compute precision, deployment target)
    ("tiny-sd15", "vae_decoder", "float16", "iOS16"),
    ("tiny-sd15", "vae_encoder", "float16", "iOS18"),
    ("tiny-sdxl-base", "vae_decoder", "float32", "iOS17"),  # SDXL VAEs stay float32
    ("tiny-sdxl-base", "vae_encoder", "float32", "iOS16"),
    ("tiny-sd15", "text_encoder", "float16", "iOS16"),
    ("tiny-sd21", "text_encoder", "float16", "iOS17"),
    ("tiny-sdxl-base", "text_encoder", "float16", "iOS18"),
    ("tiny-sdxl-base", "text_encoder_2", "float32", "iOS16"),
]


def _min_psnr(reference: dict, candidate: dict) -> float:
    assert set(candidate) == set(reference)
    return min(psnr(reference[name], candidate[name]) for name in reference)


@pytest.mark.parametrize("arch, component, precision, target", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3]}" for c in CASES])
def test_component_matches_pytorch(arch, component, precision, target):
    module, interface = synthetic_component(arch, component)
    model = convert_module(module, interface, precision=precision, target=target)
    inputs = sample_inputs(interface, seed=1)
    reference = reference_outputs(module, interface, inputs)

    device = ProgramEvaluator(model, fp16_storage=True).predict(inputs)
    exact = ProgramEvaluator(model).predict(inputs)

    assert {n: v.dtype.name for n, v in exact.items()} == {s.name: s.dtype
                                                           for s in interface.outputs}
    assert _min_psnr(reference, device) >= FP16_GATE_DB
    floor = FP32_ARTIFACT_DB if precision == "float32" else FP16_WEIGHTS_FP32_MATH_DB
    assert _min_psnr(reference, exact) >= floor


@pytest.mark.parametrize("precision", ["float16", "float32"])
def test_split_einsum_attention_matches_pytorch(precision):
    module, interface = synthetic_component("tiny-sd15", "unet", attention="SPLIT_EINSUM")
    model = convert_module(module, interface, precision=precision, target="iOS16")
    ops = {op.type for op in model.get_spec().mlProgram.functions["main"]
           .block_specializations["CoreML6"].operations}
    assert "einsum" in ops or "matmul" in ops
    inputs = sample_inputs(interface, seed=1)
    reference = reference_outputs(module, interface, inputs)
    assert _min_psnr(reference, ProgramEvaluator(model, fp16_storage=True).predict(inputs)) \
        >= FP16_GATE_DB
    floor = FP32_ARTIFACT_DB if precision == "float32" else FP16_WEIGHTS_FP32_MATH_DB
    assert _min_psnr(reference, ProgramEvaluator(model).predict(inputs)) >= floor
