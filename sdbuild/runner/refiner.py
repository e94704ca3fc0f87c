"""The SDXL refiner in the runner: a base build denoises the first part of the steps and hands its
latents (not decoded) to a refiner build, which finishes them with its own text encoder, its
aesthetic-score time ids and its own VAE decoder, as diffusers' ``denoising_end`` /
``denoising_start`` ensemble of experts does.

    sdbuild-run --recipe sdxl --refiner outputs/sdxl-refiner/<build-id> --refine-from 0.8 --prompt "..."

A refiner build alone is an image-to-image model (``--init-image``, ``--strength``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from sdbuild.errors import SdbuildError
from sdbuild.runner.pipeline import GenerationSettings, Pipeline, make_scheduler


def add_refiner_arguments(parser: argparse.ArgumentParser, defaults: GenerationSettings) -> None:
    group = parser.add_argument_group("SDXL refiner")
    group.add_argument("--refiner", help="a refiner build (recipe sdxl-refiner) that finishes this build's image")
    group.add_argument("--refine-from", type=float, default=defaults.refine_from,
                       help=f"fraction of the steps run before the refiner takes over (default {defaults.refine_from})")
    group.add_argument("--aesthetic-score", type=float, default=defaults.aesthetic_score,
                       help=f"refiner conditioning of the prompt ({defaults.aesthetic_score})")
    group.add_argument("--negative-aesthetic-score", type=float, default=defaults.negative_aesthetic_score,
                       help=f"refiner conditioning of the negative prompt ({defaults.negative_aesthetic_score})")


def check_refiner_settings(settings: GenerationSettings) -> None:
    """What needs no build: numbers that are numbers, a hand-off point inside the schedule."""
    defaults = GenerationSettings(prompt="")
    for flag, value, example in (
        ("--aesthetic-score", settings.aesthetic_score, defaults.aesthetic_score),
        ("--negative-aesthetic-score", settings.negative_aesthetic_score, defaults.negative_aesthetic_score),
        ("--refine-from", settings.refine_from, defaults.refine_from),
    ):
        if not math.isfinite(value):  # float() accepts nan and inf
            raise SdbuildError(f"{flag} {value} is not a finite number", f"e.g. {flag} {example}")
    if settings.refiner is not None and (settings.mask or settings.control_images):
        raise SdbuildError("--refiner does not take --mask or --control-image yet",
                           "inpaint or steer with the base build alone, then refine its image with --init-image")
    if settings.refiner is not None and not 0.0 < settings.refine_from < 1.0:
        raise SdbuildError(f"--refine-from {settings.refine_from} is outside (0, 1)",
                           "give the fraction of the steps the base build runs, e.g. --refine-from 0.8")


def check_hand_off(base: Pipeline, refiner: Pipeline, refiner_dir: str) -> None:
    """The two builds fit together: read from their manifests, before any model is loaded."""
    source = refiner.manifest.source
    if not refiner.is_refiner:
        raise SdbuildError(f"--refiner {refiner_dir} is a build of {source.architecture}, not of an SDXL refiner",
                           "build recipe=sdxl-refiner (or tiny-sdxl-refiner) and pass its folder")
    if base.is_refiner or base.manifest.source.family != "sdxl":
        raise SdbuildError(f"--refiner needs an SDXL base build to start from, not {base.manifest.source.architecture}",
                           "pass an sdxl build with --build or --recipe")
    if base.manifest.latent_size != refiner.manifest.latent_size:
        raise SdbuildError(
            f"the base build's latents are {'x'.join(map(str, base.manifest.latent_size))} but the refiner "
            f"build takes {'x'.join(map(str, refiner.manifest.latent_size))}",
            "build both at the same latent size (latent.height, latent.width)")
    for pipeline, component, where in ((base, base.unet_component, "base"), (refiner, "vae_decoder", "refiner")):
        if not pipeline.has(component):
            raise SdbuildError(f"the {where} build has no {component}", f"rebuild it with {component} in components")


def generate_with_refiner(base: Pipeline, settings: GenerationSettings, progress=None) -> np.ndarray:
    """Open the refiner build ``settings.refiner``, check that it fits ``base``, then generate."""
    refiner = Pipeline(Path(settings.refiner), backend=base.backend, progress=progress)
    check_hand_off(base, refiner, settings.refiner)
    return generate_refined(base, refiner, settings)


def generate_refined(base: Pipeline, refiner: Pipeline, settings: GenerationSettings) -> np.ndarray:
    """An (H, W, 3) uint8 image: ``base`` runs the timesteps down to the hand-off point,
    ``refiner`` the rest, from the base's latents."""
    scheduler, latents, timesteps, generator = base.start(settings)
    cutoff = hand_off_timestep(settings.refine_from, scheduler.config.num_train_timesteps)
    latents = base.denoise(settings, scheduler, latents, timesteps[timesteps >= cutoff], generator)
    # The refiner's own scheduler with the same steps takes the timesteps below the cutoff that
    # the base's run would have reached (image-to-image starts the base part way down).
    refiner_scheduler = make_scheduler(settings.scheduler, refiner.manifest.source.scheduler)
    refiner_scheduler.set_timesteps(settings.steps)
    remaining = refiner_scheduler.timesteps
    remaining = remaining[(remaining < cutoff) & (remaining <= timesteps[0])]
    latents = refiner.denoise(settings, refiner_scheduler, latents, remaining, generator)
    return refiner.finish(latents)


def hand_off_timestep(refine_from: float, train_timesteps: int) -> int:
    """The first timestep left to the refiner's side: diffusers' discrete cutoff."""
    return int(round(train_timesteps - refine_from * train_timesteps))
