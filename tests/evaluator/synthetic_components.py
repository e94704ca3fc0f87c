"""Components for the evaluator tests and bench, made as a build makes them: `sdbuild.models`
modules on seeded synthetic weights (converted by the convert stage, fed the build's seeded
sample inputs, by the tests)."""

from __future__ import annotations

import functools

import torch

from sdbuild import contract
from sdbuild.contract import submodel_folders
from sdbuild.models import build_component_module
from sdbuild.sources import load_submodel
from sdbuild.sources.synthetic import resolve_synthetic


@functools.cache
def _source(arch: str):
    return resolve_synthetic(arch, seed=0)


def synthetic_component(arch: str, component: str, latent: int = 8, batch: int = 2, attention: str = "ORIGINAL"
                   ) -> tuple[torch.nn.Module, contract.Interface]:
    """(contract module, interface) of ``component`` of ``arch`` with seeded weights."""
    source = _source(arch)
    submodels = {folder: load_submodel(source, folder) for folder in submodel_folders(component)}
    module = build_component_module(component, submodels, source.arch, attention).eval()
    return module, contract.component_interface(component, source.arch, (latent, latent), batch)
