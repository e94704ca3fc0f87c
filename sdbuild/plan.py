"""Build spec -> plan: one job per component, with everything its stages need to know."""

from __future__ import annotations

from dataclasses import dataclass

from sdbuild.contract import (
    CONTROL_UNET, CONTROLNET, REFINER, SAFETY_CHECKER, TEXT_ENCODER, TEXT_ENCODER_2, UNET, VAE_DECODER,
    VAE_ENCODER, Interface, component_interface, controlnet_key, package_file_name, submodel_folders,
)
from sdbuild.attention_choice import ATTENTION_COMPONENTS
from sdbuild.sources.additions import Addition
from sdbuild.spec import BuildSpec


@dataclass(frozen=True)
class ComponentJob:
    name: str  # the manifest's key: the component, or `controlnet/<id>` for each ControlNet
    component: str
    submodel: str  # the source folder whose weights it needs (and only those)
    folders: tuple[str, ...]  # every submodel folder it loads
    additions: tuple[Addition, ...]  # the recipe's additions that change those folders' weights
    interface: Interface
    precision: str
    file_name: str
    attention: str | None
    compress: bool
    chunk: bool
    min_psnr: float  # gate of each output against the PyTorch module
    min_chunks_psnr: float  # gate of the chunk pipeline against the whole model


def plan_jobs(spec: BuildSpec) -> list[ComponentJob]:
    """One job per component; the controlnet component, one per ControlNet of the recipe."""
    jobs = []
    for component in spec.components:
        if component == CONTROLNET:
            jobs += [_job(spec, component, (c,), controlnet_key(c.model_id), c.model_id)
                     for c in spec.additions if c.kind == CONTROLNET]
            continue
        folders = submodel_folders(component)
        additions = tuple(a for a in spec.additions if set(a.folders) & set(folders))
        jobs.append(_job(spec, component, additions, component, spec.source.model_id))
    return jobs


def _job(spec: BuildSpec, component: str, additions: tuple[Addition, ...], name: str, model_id: str) -> ComponentJob:
    precision = spec.vae_precision if component in (VAE_DECODER, VAE_ENCODER) else "float16"
    folders = submodel_folders(component)
    return ComponentJob(
        name=name,
        component=component,
        submodel=folders[0],
        folders=folders,
        additions=additions,
        interface=component_interface(component, spec.arch, spec.latent_size, spec.batch_size, spec.vae_precision),
        precision=precision,
        file_name=package_file_name(model_id, component),
        attention=spec.attention if component in ATTENTION_COMPONENTS else None,
        compress=spec.quantization.mode != "none" and component in spec.quantization.components,
        chunk=spec.chunking.enabled and component in spec.chunking.components,
        min_psnr=spec.min_psnr.for_component(component),
        min_chunks_psnr=spec.min_psnr.chunks,
    )


# Components from the most weights to the fewest (SD 2.1: UNet 865M, text encoder 340M, VAE 84M).
_BY_SIZE = (UNET, REFINER, CONTROL_UNET, CONTROLNET, TEXT_ENCODER_2, TEXT_ENCODER, SAFETY_CHECKER, VAE_DECODER,
            VAE_ENCODER)


def execution_order(jobs: list[ComponentJob]) -> list[ComponentJob]:
    """The order the builder runs ``jobs`` in: largest first, so the largest conversion, the
    build's peak, never has another component's verification running beside it."""
    return sorted(jobs, key=lambda job: _BY_SIZE.index(job.component))
