"""Load stage: the source weights of one component (only its submodels), with the recipe's
additions (LoRA, another VAE, embeddings, ControlNet) -> its contract module."""

from __future__ import annotations

import torch

from sdbuild.models import build_component_module
from sdbuild.plan import ComponentJob
from sdbuild.sources.additions import load_with_additions
from sdbuild.spec import BuildSpec


def load_component(spec: BuildSpec, job: ComponentJob) -> torch.nn.Module:
    submodels = {folder: load_with_additions(spec.source, folder, job.additions) for folder in job.folders}
    attention = job.attention or "ORIGINAL"
    return build_component_module(job.component, submodels, spec.arch, attention).eval()
