"""Synthetic single-file checkpoints: a synthetic model's seeded weights written as one file in
the original (LDM / SGM) key layout, the way fine-tunes are published.

The weights are exactly those of the synthetic diffusers folder (same architecture and seed), so
a build from the file and a build from the folder must give identical packages.

    sdbuild synth-file --architecture tiny-sd15 --out model.safetensors [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from sdbuild.errors import SdbuildError
from sdbuild.package_io import replace_path, staging_path
from sdbuild.sources.original_layout import TEXT_ENCODER_LAYOUTS, original_state_dict
from sdbuild.sources.single_file import SAFETENSORS_SUFFIX
from sdbuild.sources.snapshot import PICKLE_SUFFIXES
from sdbuild.sources.synthetic import resolve_synthetic
from sdbuild.sources.synthetic_weights import build_synthetic_submodel


def write_synthetic_single_file(architecture: str, seed: int, dest: Path) -> Path:
    """Write the synthetic (``architecture``, ``seed``) UNet, VAE and text encoder(s) to ``dest``
    (``.safetensors``; ``.ckpt``/``.pt``/``.pth``/``.bin`` as a pickle ``{"state_dict": ...}``)."""
    dest = Path(dest)
    if dest.suffix != SAFETENSORS_SUFFIX and dest.suffix not in PICKLE_SUFFIXES:
        raise SdbuildError(
            f"cannot write a checkpoint as '{dest}'",
            f"name it *{SAFETENSORS_SUFFIX} (or {', '.join(PICKLE_SUFFIXES)} for a pickle file)",
        )
    source = resolve_synthetic(architecture, seed)
    family = source.arch.family
    state: dict[str, torch.Tensor] = {}
    for folder in ("unet", "vae", *TEXT_ENCODER_LAYOUTS[family]):
        model = build_synthetic_submodel(source, folder)
        state |= original_state_dict(family, folder, source.configs[folder], model.state_dict())
        del model  # free before building the next submodel
    state = {key: tensor.contiguous() for key, tensor in state.items()}
    with staging_path(dest) as staged:
        if dest.suffix == SAFETENSORS_SUFFIX:
            save_file(state, staged, metadata={"format": "pt"})
        else:
            torch.save({"state_dict": state}, staged)
        replace_path(staged, dest)
    return dest


def synth_file_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sdbuild synth-file",
        description="Write a synthetic model as one checkpoint in the original (LDM / SGM) layout.",
    )
    parser.add_argument("--architecture", default="tiny-sd15", help="a bundled architecture (default tiny-sd15)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic weights' seed (default 0)")
    parser.add_argument("--out", required=True, type=Path, help="the file to write (*.safetensors)")
    args = parser.parse_args(argv)
    print(write_synthetic_single_file(args.architecture, args.seed, args.out))
    return 0
