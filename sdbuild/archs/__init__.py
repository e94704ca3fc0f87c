"""Bundled diffusers/transformers configs of the supported architectures.

Real ones (sd15, sd21-base, sd21, sdxl-base, sdxl-refiner) are the published configs; ``tiny-*``
keep each real architecture's block structure at tiny widths, for tests. Each folder is laid out like a Hub
snapshot without weights: ``<component>/config.json``.
"""

import json
from pathlib import Path

from sdbuild.errors import SdbuildError

ARCHS_DIR = Path(__file__).parent


def list_architectures() -> list[str]:
    return sorted(p.name for p in ARCHS_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))


def architecture_dir(name: str) -> Path:
    path = ARCHS_DIR / name
    if not path.is_dir() or name.startswith("_"):
        raise SdbuildError(
            f"unknown architecture '{name}'",
            f"choose one of: {', '.join(list_architectures())}",
        )
    return path


def load_component_config(arch: str, folder: str) -> dict:
    """The config.json of one component folder (unet, vae, text_encoder, ...) of a bundled arch."""
    path = architecture_dir(arch) / folder / "config.json"
    if not path.is_file():
        raise SdbuildError(f"architecture '{arch}' has no {folder}")
    return json.loads(path.read_text())
