"""Build spec -> plan: one job per component, with everything its stages need to know."""

from __future__ import annotations

from dataclasses import dataclass

from sdbuild.contract import (
    SUBMODEL_OF, VAE_DECODER, VAE_ENCODER, Interface, component_interface, package_file_name,
    submodel_folders,
)
from sdbuild.attention_choice import ATTENTION_COMPONENTS
from sdbuild.spec import BuildSpec


@dataclass(frozen=True)
class ComponentJob:
    component: str
    submodel: str  # the source folder whose weights it needs (and only those)
    folders: tuple[str, ...]  # every submodel folder it loads (a ControlNet: the UNet's and its own)
    interface: Interface
    precision: str
    file_name: str
    attention: str | None
    compress: bool
    chunk: bool
    min_psnr: float  # gate of each output against the PyTorch module
    min_chunks_psnr: float  # gate of the chunk pipeline against the whole model


def plan_jobs(spec: BuildSpec) -> list[ComponentJob]:
    jobs = []
    for component in spec.components:
        precision = spec.vae_precision if component in (VAE_DECODER, VAE_ENCODER) else "float16"
        jobs.append(
            ComponentJob(
                component=component,
                submodel=SUBMODEL_OF[component],
                folders=submodel_folders(component),
                interface=component_interface(
                    component, spec.arch, spec.latent_size, spec.batch_size, spec.vae_precision),
                precision=precision,
                file_name=package_file_name(spec.source.model_id, component),
                attention=spec.attention if component in ATTENTION_COMPONENTS else None,
                compress=spec.quantization.mode != "none" and component in spec.quantization.components,
                chunk=spec.chunking.enabled and component in spec.chunking.components,
                min_psnr=spec.min_psnr.for_component(component),
                min_chunks_psnr=spec.min_psnr.chunks,
            )
        )
    return jobs
