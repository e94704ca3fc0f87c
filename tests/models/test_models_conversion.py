"""Every component converts to an ML Program whose interface is exactly the contract's.

A tiny UNet-sized conversion takes 20-90 s on a shared machine, so each attention
implementation and each UNet-like component converts once here (PyTorch parity of the full
matrix is in test_models_parity.py; `bench/parity_real.py --archs tiny-...` converts all of it).
"""

from __future__ import annotations

import warnings

import pytest

from sdbuild import contract
from sdbuild.models import build_component_module
from sdbuild.quiet import import_coremltools
from sdbuild.stages.convert import convert_module

from tiny_models import supported_pairs, OTHER_COMPONENTS, TINY_ARCHS, contract_inputs, submodels_for, tiny_source

TARGET = "macOS13"


# (architecture, component, attention, latent size or None for the architecture's default)
UNET_LIKE_CONVERSIONS = [
    # 32x32 latents: 1024 tokens in the first down block, so chunked queries are in the graph.
    ("tiny-sd15", contract.CONTROLNET, "SPLIT_EINSUM_V2", 32),
    ("tiny-sdxl-base", contract.CONTROL_UNET, "SPLIT_EINSUM", None),
    ("tiny-sd21", contract.UNET, "ORIGINAL", None),
]


def _spec_interface(model) -> dict:
    """(name, shape, dtype) of each declared input and output of a converted model."""
    ct = import_coremltools()
    data_type = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name
    description = model.get_spec().description

    def features(items):
        return [(f.name, tuple(f.type.multiArrayType.shape), data_type(f.type.multiArrayType.dataType).lower())
                for f in items]

    return {"inputs": features(description.input), "outputs": features(description.output)}


def _check_conversion(arch_name: str, component: str, attention: str, latent: int | None = None):
    arch = tiny_source(arch_name).arch
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "SPLIT_EINSUM_V2 is not advised")
        module = build_component_module(component, submodels_for(arch_name, component), arch, attention)
    interface, _ = contract_inputs(component, arch, latent)
    precision = contract.vae_precision(arch) if component.startswith("vae") else "float16"
    model = convert_module(module, interface, precision=precision, target=TARGET)
    assert _spec_interface(model) == {
        "inputs": [(t.name, t.shape, t.dtype) for t in interface.inputs],
        "outputs": [(t.name, t.shape, t.dtype) for t in interface.outputs],
    }


@pytest.mark.parametrize("arch_name,component,attention,latent", UNET_LIKE_CONVERSIONS)
def test_unet_and_controlnet_convert_with_contract_interface(arch_name, component, attention, latent):
    _check_conversion(arch_name, component, attention, latent)


@pytest.mark.parametrize("arch_name,component", supported_pairs(OTHER_COMPONENTS))
def test_other_components_convert_with_contract_interface(arch_name, component):
    _check_conversion(arch_name, component, "ORIGINAL")
