"""The runner's inpainting mode: `--init-image PICTURE --mask MASK` on a build whose UNet takes
latents, mask and masked-image latents (9 channels), as diffusers' StableDiffusionInpaintPipeline
does it.

The mask (white = repaint, black = keep, the same size as the picture) is made grey, resized to
the image size and binarised at one half; the picture with the repainted part set to zero is
encoded by the vae_encoder; each step's UNet `sample` is the scaled latents, the mask resized
to the latent grid (nearest) and those masked-image latents, concatenated in that order. At
strength 1 (the default for inpainting) the latents start from pure noise; below, from the
picture's latents noised to the first kept timestep. Random draws follow diffusers' order
(picture latents when strength < 1, noise, masked-image latents), so both start alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sdbuild.contract import UNET, VAE_ENCODER, inpainting_channels
from sdbuild.errors import SdbuildError
from sdbuild.manifest import Manifest

if TYPE_CHECKING:
    from sdbuild.runner.pipeline import GenerationSettings, Pipeline

MASK_HINT = "white = repaint, black = keep"
INPAINTING_STRENGTH = 1.0  # diffusers' default: the masked part is generated from pure noise


def is_inpainting_build(manifest: Manifest) -> bool:
    """Whether the build's UNet takes the inpainting `sample` (latents, mask, masked-image latents)."""
    unet = manifest.components.get(UNET)
    if unet is None:
        return False
    sample = next(t for t in unet.interface.inputs if t.name == "sample")
    return sample.shape[1] == inpainting_channels(unet.interface.outputs[0].shape[1])


def _image_size(path: str, flag: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            size = image.size
            image.verify()
    except (OSError, SyntaxError) as error:  # PIL reports some damaged files as SyntaxError
        raise SdbuildError(f"{flag} {path} is not a readable image ({error})", "pass a PNG or JPEG file") from None
    return size


def check_mask_files(init_image: str | None, mask: str) -> None:
    """The mask comes with a picture, both readable, of one size."""
    if not init_image:
        raise SdbuildError("--mask needs --init-image (the picture to repaint)", "pass --init-image PICTURE with the mask")
    image_size = _image_size(init_image, "--init-image")
    mask_size = _image_size(mask, "--mask")
    if mask_size != image_size:
        raise SdbuildError(
            f"--mask {mask} is {mask_size[0]}x{mask_size[1]} but --init-image is {image_size[0]}x{image_size[1]}",
            f"give a mask of the picture's size ({MASK_HINT})",
        )


@dataclass
class Inpainting:
    """One inpainting request, checked; `start` prepares the UNet's extra channels."""

    init_image: str
    mask: str
    # Set by `start`: the (1, 1, h, w) mask and (1, 4, h, w) masked-image latents, torch tensors.
    _conditioning: tuple = field(default=(), repr=False)

    @classmethod
    def for_request(cls, manifest: Manifest, settings: GenerationSettings) -> Inpainting | None:
        """The request's inpainting inputs, or None without a mask; every mismatch between the
        request and the build, and every unreadable or mis-sized file, fails here in one line."""
        inpainting_build = is_inpainting_build(manifest)
        if settings.mask is None:
            if inpainting_build:
                raise SdbuildError("this build's UNet is an inpainting UNet: it needs --init-image and --mask",
                                   f"pass --init-image PICTURE --mask MASK ({MASK_HINT})")
            return None
        check_mask_files(settings.init_image, settings.mask)
        if not inpainting_build:
            raise SdbuildError("--mask needs an inpainting build, and this build's UNet is a text-to-image UNet",
                               "build an inpainting model (e.g. make build RECIPE=tiny-inpainting), "
                               "or drop --mask for image-to-image")
        if VAE_ENCODER not in manifest.components:
            raise SdbuildError("inpainting needs a vae_encoder in the build", "rebuild with vae_encoder in components")
        return cls(settings.init_image, settings.mask)

    def start(self, pipeline: Pipeline, settings: GenerationSettings, scheduler, generator):
        """(initial latents, timesteps); encodes the masked picture for `unet_sample`."""
        import torch
        from torch.nn import functional as F

        from sdbuild.runner.pipeline import strength_timesteps  # the pipeline imports this module

        timesteps = strength_timesteps(scheduler, settings)
        h, w = pipeline.manifest.latent_size
        shape = (1, pipeline.manifest.components[UNET].interface.outputs[0].shape[1], h, w)
        pixels = pipeline.image_pixels(self.init_image)
        if settings.strength == 1.0:
            latents = torch.randn(shape, generator=generator) * scheduler.init_noise_sigma
        else:
            image_latents = pipeline.encode_image(pixels, generator)
            latents = scheduler.add_noise(image_latents, torch.randn(shape, generator=generator), timesteps[:1])
        mask = self._mask_pixels((8 * w, 8 * h))
        masked_latents = pipeline.encode_image(pixels * (mask < 0.5), generator)
        self._conditioning = (F.interpolate(torch.from_numpy(mask), size=(h, w)), masked_latents)
        return latents, timesteps

    def unet_sample(self, latents):
        """The UNet's `sample`: scaled latents, mask, masked-image latents along the channels."""
        import torch

        return torch.cat([latents, *self._conditioning], dim=1)

    def _mask_pixels(self, size: tuple[int, int]) -> np.ndarray:
        """(1, 1, H, W) of 0 (keep) and 1 (repaint)."""
        from PIL import Image

        grey = Image.open(self.mask).convert("L").resize(size, Image.Resampling.LANCZOS)
        return (np.asarray(grey, dtype=np.float32) / 255.0 >= 0.5).astype(np.float32)[None, None]
