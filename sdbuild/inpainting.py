"""Inpainting UNets: 9 input channels (4 latent + 1 mask + 4 masked-image latents), as in
stable-diffusion-inpainting. What a build accepts of them; the runner's side is
`sdbuild.runner.inpaint`.

The reference converter sizes the UNet's `sample` input from the UNet's own `in_channels`, so an
inpainting UNet keeps the contract's names with `sample` (B, 9, h, w) and `noise_pred`
(B, 4, h, w); apps concatenate latents, mask and masked-image latents into `sample`.
"""

from __future__ import annotations

from sdbuild.contract import CONTROL_UNET, CONTROLNET, ArchInfo, inpainting_channels
from sdbuild.errors import SdbuildError


def check_unet_inputs(arch: ArchInfo, where: str) -> None:
    """A UNet takes the latents (text-to-image) or the inpainting layout; anything else is a
    model this project does not know how to feed."""
    latent = arch.latent_channels
    if arch.unet_in_channels not in (latent, inpainting_channels(latent)):
        raise SdbuildError(
            f"the UNet in {where} takes {arch.unet_in_channels} input channels: neither the {latent} "
            f"latent channels nor the {inpainting_channels(latent)} of an inpainting UNet "
            f"(latents, mask, masked-image latents)",
            "use a text-to-image or an inpainting Stable Diffusion UNet",
        )


def check_inpainting_components(arch: ArchInfo, components: tuple[str, ...]) -> None:
    """ControlNet residuals are trained against text-to-image UNets: not offered with an
    inpainting UNet."""
    control = [c for c in (CONTROL_UNET, CONTROLNET) if c in components]
    if arch.is_inpainting and control:
        raise SdbuildError(
            f"architecture '{arch.name}' has an inpainting UNet, which sdbuild does not build "
            f"with {' or '.join(control)}",
            f"drop {', '.join(control)} from components",
        )
