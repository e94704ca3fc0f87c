"""The yardstick for whole generations: diffusers' own pipeline on the same weights as a build.

A synthetic build's weights are written as a diffusers folder (`write_synthetic_snapshot`), the
pipeline runs there with the runner's scheduler, seed and steps, and the two images are compared
by PSNR. Both draw the initial noise from `torch.Generator().manual_seed(seed)` with the same
shape, so they start from the same latents.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch

from sdbuild.metrics import psnr
from sdbuild.runner.pipeline import SCHEDULERS, GenerationSettings
from sdbuild.sources import write_synthetic_snapshot
from sdbuild.sources.models import quiet_loading

PARITY_PSNR_DB = 30.0  # the gate for a whole generation on tiny models


def synthetic_folder(architecture: str, seed: int, root: Path) -> Path:
    """The diffusers folder of a synthetic model (written once per ``root``)."""
    folder = root / f"{architecture}-{seed}"
    if not folder.is_dir():
        write_synthetic_snapshot(architecture, seed, folder)
    return folder


def diffusers_image(pipeline_class, folder: Path, settings: GenerationSettings, prepare=None, components=None,
                    **call_options) -> np.ndarray:
    """An (H, W, 3) uint8 image from ``pipeline_class`` loaded from ``folder`` in float32.

    ``components`` are pipeline components the folder lacks (a ``controlnet=`` model, ...);
    ``prepare(pipe)`` may change the pipeline first (load a LoRA, swap the VAE, ...);
    ``call_options`` go to the pipeline call (image=, mask_image=, control_image=, ...)."""
    images = diffusers_output(pipeline_class, folder, settings, prepare, components, output_type="np", **call_options)
    return (np.clip(images[0], 0.0, 1.0) * 255).round().astype(np.uint8)


def diffusers_output(pipeline_class, folder: Path, settings: GenerationSettings, prepare=None, components=None,
                     **call_options):
    """The pipeline's ``images`` as ``call_options`` ask for them (``output_type="latent"``: the
    latents before decoding, as an SDXL base hands them to the refiner)."""
    import diffusers

    # The runner filters only when a build has a safety checker; these comparisons have none.
    no_checker = {"safety_checker": None, "requires_safety_checker": False} \
        if "safety_checker" in inspect.signature(pipeline_class.__init__).parameters else {}
    with quiet_loading():
        pipe = pipeline_class.from_pretrained(folder, torch_dtype=torch.float32, **no_checker, **(components or {}))
    scheduler_class = getattr(diffusers, SCHEDULERS[settings.scheduler])
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if prepare is not None:
        prepare(pipe)
    result = pipe(
        prompt=settings.prompt, negative_prompt=settings.negative_prompt,
        num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
        generator=torch.Generator().manual_seed(settings.seed), **call_options,
    )
    return result.images


def image_psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of two uint8 images, with the project's formula."""
    return psnr(reference.astype(np.float32), image.astype(np.float32))
