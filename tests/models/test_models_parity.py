"""Our component modules compute what the stock diffusers/transformers modules compute.

Same seeded weights, same contract-shaped inputs, float32: every output must match at 60 dB
PSNR or better (the build's gate after float16 conversion is 35 dB).
"""

from __future__ import annotations

import pytest
import torch

from sdbuild import contract
from sdbuild.metrics import psnr
from sdbuild.attention_choice import ATTENTION_COMPONENTS
from sdbuild.models import build_component_module
from sdbuild.models.attention import QUERY_CHUNK
from sdbuild.models.reference import reference_outputs

from tiny_models import supported_pairs, ATTENTIONS, OTHER_COMPONENTS, contract_inputs, submodels_for, tiny_source

MIN_PSNR = 60.0


def _check_parity(arch_name: str, component: str, attention: str, latent: int | None = None):
    arch = tiny_source(arch_name).arch
    submodels = submodels_for(arch_name, component)
    interface, inputs = contract_inputs(component, arch, latent)
    module = build_component_module(component, submodels, arch, attention)
    with torch.no_grad():
        ours = module(*inputs)
    expected = reference_outputs(component, submodels, arch, inputs)
    assert len(ours) == len(interface.outputs)
    for spec, got in zip(interface.outputs, ours):
        assert tuple(got.shape) == spec.shape, spec.name
    for spec, want, got in zip(interface.outputs, expected, ours):
        assert psnr(want.numpy(), got.numpy()) >= MIN_PSNR, spec.name
    return ours


@pytest.mark.filterwarnings("ignore:SPLIT_EINSUM_V2 is not advised")
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("arch_name,component", supported_pairs(ATTENTION_COMPONENTS))
def test_unet_and_controlnet_match_diffusers(arch_name, component, attention):
    _check_parity(arch_name, component, attention)


@pytest.mark.parametrize("arch_name,component", supported_pairs(OTHER_COMPONENTS))
def test_other_components_match_reference(arch_name, component):
    _check_parity(arch_name, component, "ORIGINAL")


@pytest.mark.parametrize("component", [contract.UNET, contract.CONTROLNET])
def test_query_chunking_matches_at_1024_tokens(component):
    """32x32 latents put 1024 tokens in the first transformers: two 512-query chunks."""
    assert 32 * 32 > QUERY_CHUNK
    _check_parity("tiny-sd15", component, "SPLIT_EINSUM_V2", latent=32)


def test_controlnet_residuals_feed_the_control_unet():
    """Zero residuals leave the UNet unchanged; the ControlNet's outputs change it."""
    arch = tiny_source("tiny-sd15").arch
    unet = build_component_module(contract.UNET, submodels_for("tiny-sd15", contract.UNET), arch, "SPLIT_EINSUM")
    control_unet = build_component_module(
        contract.CONTROL_UNET, submodels_for("tiny-sd15", contract.CONTROL_UNET), arch, "SPLIT_EINSUM")
    controlnet = build_component_module(
        contract.CONTROLNET, submodels_for("tiny-sd15", contract.CONTROLNET), arch, "SPLIT_EINSUM")
    _, inputs = contract_inputs(contract.CONTROLNET, arch)
    with torch.no_grad():
        residuals = controlnet(*inputs)
        plain = unet(*inputs[:3])[0]
        zero = control_unet(*inputs[:3], *(torch.zeros_like(r) for r in residuals))[0]
        controlled = control_unet(*inputs[:3], *residuals)[0]
    assert torch.equal(plain, zero)
    assert psnr(plain.numpy(), controlled.numpy()) < 40


def test_safety_checker_blacks_out_flagged_images():
    """With every concept threshold below any cosine score, all images are flagged and zeroed."""
    arch = tiny_source("tiny-sd15").arch
    checker = submodels_for("tiny-sd15", contract.SAFETY_CHECKER)["safety_checker"]
    module = build_component_module(contract.SAFETY_CHECKER, {"safety_checker": checker}, arch, "ORIGINAL")
    _, inputs = contract_inputs(contract.SAFETY_CHECKER, arch)
    with torch.no_grad():
        filtered, flagged, scores = module(*inputs)
        assert torch.equal(flagged.flatten(), (scores > 0).any(dim=1).float())
        module.concept_embeds_weights = torch.nn.Parameter(torch.full_like(scores[0], -2.0))
        filtered, flagged, scores = module(*inputs)
    assert flagged.flatten().tolist() == [1.0]
    assert (scores > 0).all()
    assert not filtered.any()
