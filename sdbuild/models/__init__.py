"""PyTorch modules that compute each component exactly as the contract declares it.

``build_component_module`` is the one entry point: it re-implements (UNet, ControlNet) or wraps
(text encoders, VAE, safety checker) the loaded diffusers/transformers model so that ``forward``
takes the contract's inputs positionally and returns a tuple in the order of the contract's
outputs, ready for ``torch.jit.trace`` and conversion to an ML Program.
"""

from __future__ import annotations

from torch import nn

from sdbuild import contract
from sdbuild.attention_choice import check_attention
from sdbuild.contract import ArchInfo
from sdbuild.errors import SdbuildError
from sdbuild.models.controlnet import ControlNet
from sdbuild.models.safety_checker import SafetyChecker
from sdbuild.models.text_encoder import TextEncoder
from sdbuild.models.unet import UNet
from sdbuild.models.vae import VAEDecoder, VAEEncoder


def _submodel(component: str, submodels: dict[str, nn.Module], folder: str) -> nn.Module:
    if folder not in submodels:
        raise SdbuildError(
            f"component '{component}' needs the '{folder}' submodel, which was not loaded",
            f"load the source's '{folder}' folder (loaded: {', '.join(sorted(submodels)) or 'none'})",
        )
    return submodels[folder]


def build_component_module(component: str, submodels: dict[str, nn.Module], arch: ArchInfo,
                           attention: str) -> nn.Module:
    """The traceable module for ``component``; inputs/outputs follow ``component_interface``.

    ``submodels`` maps source folder names (``contract.SUBMODEL_OF``) to loaded float32 modules
    in eval mode; ``controlnet`` also needs the loaded ControlNet under ``"controlnet"``.
    ``attention`` selects the attention implementation of the UNet and ControlNet. Scaling by
    the latent scaling factor is left to the runner, as in Apple's reference.

    UNet and ControlNet weights are shared with the given modules, not copied.
    """
    if component not in contract.ALL_COMPONENTS:
        raise SdbuildError(f"unknown component '{component}'",
                           f"choose from {', '.join(contract.ALL_COMPONENTS)}")
    if not arch.supports(component):
        raise SdbuildError(f"architecture '{arch.name}' has no component '{component}'",
                           f"drop '{component}' from the build's components")
    check_attention(component, attention, arch)

    if component == contract.CONTROLNET:
        return ControlNet.from_diffusers(_submodel(component, submodels, "controlnet"), attention)

    source = _submodel(component, submodels, contract.SUBMODEL_OF[component])
    if component in (contract.TEXT_ENCODER, contract.TEXT_ENCODER_2):
        module = TextEncoder(source, penultimate=arch.is_xl,
                             project_pooled=component == contract.TEXT_ENCODER_2)
    elif component in (contract.UNET, contract.REFINER, contract.CONTROL_UNET):
        module = UNet.from_diffusers(source, attention,
                                     control_residuals=component == contract.CONTROL_UNET)
    elif component == contract.VAE_DECODER:
        module = VAEDecoder(source)
    elif component == contract.VAE_ENCODER:
        module = VAEEncoder(source)
    else:
        module = SafetyChecker(source)
    return module.eval()
