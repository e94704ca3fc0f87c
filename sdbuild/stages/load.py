"""Load stage: the source weights of one component (only that submodel) -> its contract module."""

from __future__ import annotations

import torch

from sdbuild.models import build_component_module
from sdbuild.plan import ComponentJob
from sdbuild.sources import ResolvedSource, load_submodel


def load_component(source: ResolvedSource, job: ComponentJob) -> torch.nn.Module:
    submodels = {job.submodel: load_submodel(source, job.submodel)}
    if job.component == "controlnet":
        submodels["controlnet"] = load_submodel(source, "controlnet")
    attention = job.attention or "ORIGINAL"
    return build_component_module(job.component, submodels, source.arch, attention).eval()
