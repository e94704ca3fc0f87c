"""Helpers shared by the sources tests (a module name unique in the suite, unlike conftest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

SEED = 11


@dataclass
class ModelConfig:
    """Duck-typed stand-in for the recipe schema's model config."""

    source: str
    id: str | None = None
    revision: str | None = None
    path: str | None = None
    architecture: str = "tiny-sd21-base"
    seed: int = SEED
    allow_pickle: bool = False
    tokenizer: str | None = None


def replace_with_pickle(folder: Path) -> Path:
    """Swap a diffusers submodel's safetensors weights for a pickle (.bin) file of the same tensors."""
    weights = folder / "diffusion_pytorch_model.safetensors"
    pickle = folder / "diffusion_pytorch_model.bin"
    torch.save(load_file(weights), pickle)
    weights.unlink()
    return pickle
