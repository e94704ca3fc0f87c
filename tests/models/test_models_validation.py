"""Bad requests fail with a clear SdbuildError; discouraged ones warn."""

from __future__ import annotations

import warnings

import pytest
import torch

from sdbuild import contract
from sdbuild.errors import SdbuildError
from sdbuild.models import build_component_module
from sdbuild.models.unet import UNet

from tiny_models import TINY_ARCHS, contract_inputs, submodels_for, tiny_source


def _arch(name: str = "tiny-sd15"):
    return tiny_source(name).arch


def test_unknown_attention_is_refused():
    with pytest.raises(SdbuildError, match="unknown attention implementation 'FAST'") as error:
        build_component_module(contract.UNET, submodels_for("tiny-sd15", contract.UNET), _arch(), "FAST")
    assert "SPLIT_EINSUM" in error.value.hint


def test_unknown_component_is_refused():
    with pytest.raises(SdbuildError, match="unknown component 'upscaler'"):
        build_component_module("upscaler", {}, _arch(), "ORIGINAL")
    # A known component of another architecture: the SDXL refiner's UNet.
    with pytest.raises(SdbuildError, match="architecture 'tiny-sd15' has no component 'refiner'"):
        build_component_module("refiner", {}, _arch(), "ORIGINAL")


def test_component_missing_from_architecture_is_refused():
    with pytest.raises(SdbuildError, match="has no component 'safety_checker'"):
        build_component_module(contract.SAFETY_CHECKER, {}, _arch("tiny-sd21"), "ORIGINAL")


def test_missing_submodel_is_named():
    with pytest.raises(SdbuildError, match="needs the 'controlnet' submodel") as error:
        build_component_module(contract.CONTROLNET, submodels_for("tiny-sd15", contract.UNET), _arch(),
                               "ORIGINAL")
    assert "loaded: unet" in error.value.hint


def test_split_einsum_v2_on_sdxl_warns_only_where_attention_is_built():
    arch = _arch("tiny-sdxl-base")
    with pytest.warns(UserWarning, match="SPLIT_EINSUM_V2 is not advised for SDXL"):
        build_component_module(contract.UNET, submodels_for("tiny-sdxl-base", contract.UNET), arch,
                               "SPLIT_EINSUM_V2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_component_module(contract.VAE_DECODER, submodels_for("tiny-sdxl-base", contract.VAE_DECODER),
                               arch, "SPLIT_EINSUM_V2")
        build_component_module(contract.UNET, submodels_for("tiny-sdxl-base", contract.UNET), arch,
                               "SPLIT_EINSUM")


@pytest.mark.parametrize("setting,value", [
    ("class_embed_type", "timestep"),
    ("addition_embed_type", "text_image"),
    ("only_cross_attention", True),
    ("resnet_time_scale_shift", "scale_shift"),
    ("down_block_types", ["SimpleCrossAttnDownBlock2D"] * 4),
    ("transformer_layers_per_block", [[1, 2], [1, 1], [1, 1], [1, 1]]),
])
def test_unsupported_unet_settings_are_refused(setting, value):
    config = dict(submodels_for("tiny-sd15", contract.UNET)["unet"].config)
    config[setting] = value
    with pytest.raises(SdbuildError, match="unsupported UNet"):
        UNet(config, "ORIGINAL")


def test_latent_size_must_divide_by_the_downsampling():
    arch = _arch()
    module = build_component_module(contract.UNET, submodels_for("tiny-sd15", contract.UNET), arch, "ORIGINAL")
    _, inputs = contract_inputs(contract.UNET, arch, latent=12)
    with pytest.raises(SdbuildError, match="latent size 12x12 is not divisible by 8"), torch.no_grad():
        module(*inputs)


@pytest.mark.parametrize("arch_name,family", zip(TINY_ARCHS, ["sd1", "sd2", "sd2", "sdxl"]))
def test_tiny_architectures_keep_their_family(arch_name, family):
    assert _arch(arch_name).family == family


def test_safety_checker_flag_keeps_the_reference_shape():
    outputs = contract.component_interface(contract.SAFETY_CHECKER, _arch(), (64, 64), 1).outputs
    assert [o.shape for o in outputs] == [(1, 512, 512, 3), (1, 1, 1, 1), (1, 17)]
