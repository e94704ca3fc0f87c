"""Helpers for the model tests: seeded tiny submodels and contract-shaped inputs."""

from __future__ import annotations

import functools
import warnings

import torch

from sdbuild import contract
from sdbuild.contract import submodel_folders
from sdbuild.sample_inputs import sample_inputs
from sdbuild.sources import load_submodel
from sdbuild.sources.synthetic import resolve_synthetic
from sdbuild.stages.trace import to_tensors

TINY_ARCHS = ("tiny-sd15", "tiny-sd21-base", "tiny-sd21", "tiny-sdxl-base")
ATTENTIONS = ("ORIGINAL", "SPLIT_EINSUM", "SPLIT_EINSUM_V2")
OTHER_COMPONENTS = (contract.TEXT_ENCODER, contract.TEXT_ENCODER_2, contract.VAE_DECODER,
                    contract.VAE_ENCODER, contract.SAFETY_CHECKER)
BATCH = 2


@functools.cache
def tiny_source(arch: str):
    return resolve_synthetic(arch, seed=0)


def supported_pairs(components) -> list[tuple[str, str]]:
    """(tiny arch, component) for each component the architecture has."""
    return [(arch, component) for arch in TINY_ARCHS for component in components
            if tiny_source(arch).arch.supports(component)]


@functools.cache
def tiny_submodel(arch: str, folder: str) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_submodel(tiny_source(arch), folder)


def submodels_for(arch: str, component: str) -> dict[str, torch.nn.Module]:
    return {folder: tiny_submodel(arch, folder) for folder in submodel_folders(component)}


def contract_inputs(component: str, arch, latent: int | None = None):
    size = latent or arch.default_latent_size
    interface = contract.component_interface(component, arch, (size, size), BATCH)
    return interface, to_tensors(sample_inputs(interface), interface)
