"""Synthetic sources: a bundled architecture with seeded random weights.

Resolving one reads the bundled configs only; the weights are made by
`sdbuild.sources.synthetic_weights` when a component is built.
"""

from __future__ import annotations

from sdbuild.archs import architecture_dir, load_component_config
from sdbuild.sources.digest import json_digest
from sdbuild.sources.resolved import (
    CONTROLNET_FOLDER, SCHEDULER_FOLDER, ResolvedSource, arch_from_configs,
)

# Bump when weight or tokenizer generation changes: it is part of every synthetic digest.
SYNTHETIC_SCHEME_VERSION = 1



def synthetic_configs(architecture: str) -> dict[str, dict]:
    """The bundled configs of ``architecture`` by folder (unet, vae, text encoders, scheduler...)."""
    folders = sorted(
        p.name for p in architecture_dir(architecture).iterdir() if (p / "config.json").is_file()
    )
    return {folder: load_component_config(architecture, folder) for folder in folders}


def resolve_synthetic(architecture: str, seed: int) -> ResolvedSource:
    configs = synthetic_configs(architecture)
    digest = json_digest({"configs": configs, "seed": seed, "scheme": SYNTHETIC_SCHEME_VERSION})
    arch = arch_from_configs(architecture, configs, f"bundled architecture '{architecture}'")
    return ResolvedSource(
        kind="synthetic", model_id=f"synthetic/{architecture}", revision=None, digest=digest,
        arch=arch, configs=configs, root=None, seed=seed,
    )


def synthetic_folders(source: ResolvedSource) -> list[str]:
    """Submodel folders a synthetic source can build: its weighted folders plus a ControlNet."""
    return [f for f in source.configs if f != SCHEDULER_FOLDER] + [CONTROLNET_FOLDER]
