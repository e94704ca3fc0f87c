"""ControlNets at run time, as diffusers' ``StableDiffusionControlNetPipeline`` runs them.

Each control image is resized to the output size (Lanczos) and scaled to RGB in [0, 1]; at every
step each ControlNet package runs on the UNet's own inputs (both halves of the classifier-free
guidance batch) plus its image, and its residuals, times its scale, are summed into the
``control-unet``'s ``additional_residual_{i}``. A build holds one ControlNet package per recipe
entry (manifest key ``controlnet/<id>``); the manifest's ``additions`` keep the recipe's order,
which is the order of ``--control-image``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sdbuild.contract import CONTROL_UNET, CONTROLNET, UNET, controlnet_key
from sdbuild.errors import SdbuildError
from sdbuild.manifest import Manifest
from sdbuild.runner.backends import Predictor

CONTROL_INPUT = "controlnet_cond"


def controlnet_keys(manifest: Manifest) -> tuple[str, ...]:
    """The manifest keys of the build's ControlNets, in the recipe's order."""
    return tuple(controlnet_key(a["model_id"]) for a in manifest.additions if a.get("kind") == CONTROLNET)


@dataclass(frozen=True)
class Control:
    keys: tuple[str, ...]  # the ControlNets' manifest keys
    input_names: tuple[tuple[str, ...], ...]  # each ControlNet's inputs
    images: tuple[np.ndarray, ...]  # (1, 3, H, W) float32 RGB in [0, 1], one per ControlNet
    scales: tuple[float, ...]

    def residuals(self, model: Callable[[str], Predictor], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The control-unet's ``additional_residual_{i}`` for the UNet call ``feed``."""
        batch = feed["sample"].shape[0]
        total: dict[str, np.ndarray] = {}
        for key, names, image, scale in zip(self.keys, self.input_names, self.images, self.scales):
            inputs = {**feed, CONTROL_INPUT: np.repeat(image, batch, axis=0)}
            outputs = model(key).predict({name: inputs[name] for name in names})
            for name, value in outputs.items():
                total[name] = total[name] + scale * value if name in total else scale * value
        return total


def prepare_control(manifest: Manifest, image_paths: tuple[str, ...], scales: tuple[float, ...]) -> Control | None:
    """The control inputs of a generation, or None to run the plain UNet; every problem fails here,
    in one line, before any model is loaded."""
    keys = controlnet_keys(manifest)
    if CONTROL_UNET not in manifest.components or not keys:
        if image_paths:
            raise SdbuildError("--control-image was given but this build has no ControlNet",
                               "build a recipe with controlnet entries (e.g. recipe=tiny-controlnet), or drop --control-image")
        return None
    if not image_paths:
        if UNET in manifest.components:  # the build also has the plain UNet: an uncontrolled image
            return None
        raise SdbuildError("this build's UNet needs ControlNet residuals, and no --control-image was given",
                           f"pass --control-image PATH once per ControlNet ({', '.join(keys)})")
    if len(image_paths) != len(keys):
        raise SdbuildError(f"{len(image_paths)} --control-image for {len(keys)} ControlNets ({', '.join(keys)})",
                           "pass --control-image once per ControlNet, in the recipe's order")
    if len(scales) not in (1, len(keys)) or not all(math.isfinite(s) for s in scales):
        raise SdbuildError(f"--control-scale {' '.join(map(str, scales))} is not one finite number, or one per ControlNet",
                           "e.g. --control-scale 1.0")
    h, w = (8 * size for size in manifest.latent_size)
    return Control(
        keys=keys,
        input_names=tuple(tuple(t.name for t in manifest.components[k].interface.inputs) for k in keys),
        images=tuple(control_image(path, (h, w)) for path in image_paths),
        scales=tuple(scales) * (len(keys) // len(scales)),
    )


def control_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """(1, 3, H, W) float32 RGB in [0, 1], resized to ``size`` (H, W) as diffusers' control image
    processor does (Lanczos, no normalisation)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.LANCZOS)
    except (OSError, SyntaxError) as error:  # PIL reports some damaged files as SyntaxError
        raise SdbuildError(f"--control-image {path} is not a readable image ({error})",
                           "pass a PNG or JPEG file") from None
    return (np.asarray(rgb, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]
